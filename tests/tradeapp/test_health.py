from __future__ import annotations

import pytest


@pytest.mark.django_db(transaction=True)
def test_healthz_200_when_database_redis_and_worker_are_up(client, celery_worker):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["redis"]["ok"] and body["celery"]["ok"]
    # Anonymous callers (load balancers) get the verdict without internals.
    assert body["celery"]["workers"] >= 1
    assert "error" not in body["database"]
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db(transaction=True)
def test_healthz_shows_worker_names_to_staff(client, celery_worker, staff_user):
    client.force_login(staff_user)
    body = client.get("/healthz").json()
    assert celery_worker.hostname in body["celery"]["workers"]
    assert body["database"]["vendor"] in {"sqlite", "postgresql"}


@pytest.mark.django_db
def test_healthz_503_when_redis_is_unreachable(client, settings, staff_user):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    client.force_login(staff_user)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is False
    assert "Connection" in body["redis"]["error"]
    assert body["celery"]["ok"] is False


@pytest.mark.django_db
def test_healthz_only_answers_safe_methods(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_healthz_reports_a_silent_collector(client, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    from marketdata.models import CollectionStatus, Exchange
    from marketdata.services import instrument_ensure

    Exchange.objects.create(ccxt_id="simulated", name="Simulated", kind="simulated")
    instrument = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    client.force_login(staff_user)

    body = client.get("/healthz").json()
    assert body["collection"]["ok"] is False  # never reported
    assert "simulated:BTC/USDT" in body["collection"]["error"]

    CollectionStatus.objects.create(
        instrument=instrument, state="running", heartbeat_at=timezone.now(),
        last_tick_at=timezone.now() - timedelta(seconds=3), rejects_count=2,
    )  # fmt: skip
    collection = client.get("/healthz").json()["collection"]
    assert collection["ok"] is True
    assert collection["instruments"] == 1 and collection["rejects"] == 2
    assert 2 < collection["max_lag_s"] < 60

    CollectionStatus.objects.filter(instrument=instrument).update(
        heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["collection"]["ok"] is False


@pytest.mark.django_db
def test_healthz_has_no_processes_part_when_not_run_by_supervisord(client, staff_user, monkeypatch):
    """systemd or the test suite run the processes: /healthz neither lists nor fails them
    (tests/tradeapp/test_supervise.py checks the part under `make run`)."""
    monkeypatch.delenv("SUPERVISOR_SERVER_URL", raising=False)
    client.force_login(staff_user)
    assert "processes" not in client.get("/healthz").json()


@pytest.mark.django_db
def test_healthz_503_when_the_supervisord_it_runs_under_is_gone(
    client, staff_user, monkeypatch, tmp_path
):
    monkeypatch.setenv("SUPERVISOR_SERVER_URL", f"unix://{tmp_path / 'supervisor.sock'}")
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 503
    assert anonymous.json()["processes"].keys() == {"ok", "ms"}
    client.force_login(staff_user)
    processes = client.get("/healthz").json()["processes"]
    assert processes["ok"] is False
    assert "FileNotFoundError" in processes["error"]
