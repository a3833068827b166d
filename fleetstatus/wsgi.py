"""
WSGI config for fleetstatus project.

It exposes the WSGI callable as a module-level variable named ``application``.

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/wsgi/
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'fleetstatus.settings')

# A steady-state heartbeat fetch is answered before Django's request handling (devices/fastpath.py);
# every other request, and every fetch the cache cannot answer, goes to Django unchanged.
_django = get_wsgi_application()

from devices.api.fastpath import FastPathWSGI  # noqa: E402  (needs the apps loaded)

application = FastPathWSGI(_django)
