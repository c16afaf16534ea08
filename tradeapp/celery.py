"""The Celery application: configured from Django settings (``CELERY_*``), tasks autodiscovered.

Queues: ``collect`` (market data), ``bots`` (bot processing), ``backtests`` and ``default``;
tasks are routed by the prefix of their explicit name (``CELERY_TASK_ROUTES``).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeapp.settings")

app = Celery("tradeapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
