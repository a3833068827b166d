"""The WSGI application of the web process (gunicorn fleetstatus.wsgi, and runserver through WSGI_APPLICATION).

A steady-state device fetch is answered by the device API's edge before Django's request handling
(devices/api/edge.py); every other request, and every fetch the cache cannot answer, goes to Django.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetstatus.settings")

django_application = get_wsgi_application()

from devices.api.edge import EdgeWSGI  # noqa: E402  (needs the apps loaded)

application = EdgeWSGI(django_application)
