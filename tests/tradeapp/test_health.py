from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # TLS is the proxy's job; the production profile's HTTPS redirect is not what these test.
    settings.SECURE_SSL_REDIRECT = False


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
