"""Celery against a real worker process and real Redis (never eager mode)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.db import connection

from tradeapp.celery import app
from tradeapp.tasks import diagnose


def test_celery_configuration_is_the_agreed_one():
    conf = app.conf
    assert conf.task_always_eager is False
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.broker_url == settings.CELERY_BROKER_URL
    routes = conf.task_routes
    assert {routes[p]["queue"] for p in routes} == {"collect", "bots", "backtests"}
    assert diagnose.name == "tradeapp.diagnose"


@pytest.mark.django_db(transaction=True)
def test_celery_task_runs_in_real_worker_and_result_comes_back(celery_worker):
    token = uuid.uuid4().hex
    result = diagnose.delay(token)
    try:
        value = result.get(timeout=60)
    except Exception:
        pytest.fail(f"task did not come back\n--- worker log ---\n{celery_worker.log_tail()}")
    assert value["token"] == token
    # The worker is another process, on the same test database as this test.
    assert value["database"] == connection.vendor
    assert value["database_name"] == str(settings.DATABASES["default"]["NAME"])
    assert celery_worker.proc.poll() is None
    assert result.state == "SUCCESS"


def test_celery_tasks_are_routed_to_their_queues():
    router = app.amqp.router
    for name, queue in [
        ("marketdata.collect_trades", "collect"),
        ("bots.process_candle", "bots"),
        ("backtests.run", "backtests"),
        ("tradeapp.diagnose", "default"),
    ]:
        route = router.route({}, name)
        assert route["queue"].name == queue, name
