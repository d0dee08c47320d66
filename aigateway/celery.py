"""Celery app: usage flush and provider health checks run here (schedule in settings)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")

app = Celery("aigateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
