"""Fixtures for the whole suite.

Services are real: the embedded profile starts its private Redis for the session; the production
profile uses DATABASE_URL/REDIS_URL and fails (never skips) when they are unreachable. Tests that
need a Celery worker request ``celery_worker``: a real worker process on the test database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.factories import StaffUserFactory, UserFactory
from tests.support import eventually

__all__ = ["eventually"]


def pytest_configure(config: pytest.Config) -> None:
    # `make run` and deployments fill STATIC_ROOT with collectstatic; the suite serves from the
    # app folders, but WhiteNoise expects the directory as soon as the ASGI app is imported.
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    # CI sets TRADEAPP_REQUIRE_SERVICES=1: the run must be against PostgreSQL and a Redis server,
    # never a silent fall-back to the embedded profile.
    if os.environ.get("TRADEAPP_REQUIRE_SERVICES") == "1":
        engine = settings.DATABASES["default"]["ENGINE"]
        if not settings.PRODUCTION or engine != "django.db.backends.postgresql":
            raise pytest.UsageError(
                "TRADEAPP_REQUIRE_SERVICES=1 but the suite is not configured for PostgreSQL and "
                f"Redis (profile {settings.TRADEAPP_PROFILE}, engine {engine}): set DATABASE_URL "
                "and REDIS_URL."
            )


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[str]:
    """The Redis of this run: the embedded one, started here, or REDIS_URL's, which must answer."""
    from tradeapp import embedded_redis
    from tradeapp.redis_client import get_redis

    if settings.EMBEDDED_REDIS_SOCKET is not None:
        proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET)
        try:
            yield settings.REDIS_URL
        finally:
            embedded_redis.stop(proc)
        return
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at REDIS_URL={settings.REDIS_URL} is unreachable: {exc}")
    yield settings.REDIS_URL


@pytest.fixture(scope="session", autouse=True)
def _collected_static(django_db_blocker) -> None:
    """The production profile serves hashed static files from collectstatic's manifest, as a
    deployment does (`make run` collects them first): collect them once for the session."""
    if settings.PRODUCTION:
        from django.core.management import call_command

        with django_db_blocker.unblock():
            call_command("collectstatic", interactive=False, verbosity=0)


@pytest.fixture(autouse=True)
def _plain_http(settings) -> None:
    """The production profile redirects plain HTTP to HTTPS (TLS ends at a proxy in front of
    the web process); Django's test client speaks plain HTTP. The browser tests go through
    HTTPS in that profile, and ``test_settings`` checks the redirect is configured."""
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Iterator[None]:
    """Each test gets its own channel layer instance. channels-redis keeps, per instance, one
    receive lock for the process's channel; a test whose event loop closes while a consumer
    waits on it would leave that lock bound to a dead loop for every later test."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    hostname: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_worker() -> WorkerProcess:
    """Start a real ``celery worker`` process (prefork pool) on the test database and Redis."""
    from django.db import connection

    from tradeapp.celery import app

    hostname = f"test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    log = settings.VAR_DIR / f"celery-{hostname.split('@', maxsplit=1)[0]}.log"
    env = {**os.environ, "TRADEAPP_DATABASE_NAME": str(connection.settings_dict["NAME"])}
    argv = [
        sys.executable, "-m", "celery", "-A", "tradeapp", "worker",
        "--loglevel", "INFO", "--pool", "prefork", "--concurrency", "1",
        "--queues", ",".join(settings.TRADEAPP_CELERY_QUEUES),
        "--hostname", hostname, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    worker = WorkerProcess(proc, hostname, log)
    try:
        eventually(
            lambda: proc.poll() is None and app.control.ping(destination=[hostname], timeout=0.5),
            timeout=60,
            message=f"worker {hostname} answers a ping",
        )
    except AssertionError as exc:
        proc.kill()
        pytest.fail(f"{exc}\n--- worker log ---\n{worker.log_tail()}")
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    worker.proc.terminate()  # warm shutdown
    try:
        worker.proc.wait(30)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        worker.proc.wait()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, redis_server) -> Iterator[WorkerProcess]:
    """A real worker process for the session (see ``start_worker``)."""
    worker = start_worker()
    yield worker
    stop_worker(worker)


@pytest.fixture
def second_celery_worker(celery_worker) -> Iterator[WorkerProcess]:
    """One more worker process, for tests of work spread over several workers."""
    worker = start_worker()
    yield worker
    stop_worker(worker)


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    return StaffUserFactory()


@pytest.fixture
def user_factory():
    return UserFactory


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, whose teardown first ends sessions other threads or the
    suite's worker processes still hold (PostgreSQL refuses to drop a database in use)."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
