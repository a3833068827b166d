"""The Celery app: `celery -A fleetstatus worker` and exactly one `celery -A fleetstatus beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetstatus.settings")

app = Celery("fleetstatus")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
