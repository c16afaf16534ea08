"""Fixtures of the service-restart fault tests: a private PostgreSQL cluster for the session
(migrated once into a template database), and per test a private Redis, the local exchange and
the platform's processes on a fresh copy of that database (see ``support``)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.exchange_server import FakeBinance
from tests.faults.support import Platform, PrivatePostgres, PrivateRedis, free_port

TEMPLATE_DB = "faults_template"


N_BOTS = 6


@pytest.fixture(scope="session")
def faults_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradeapp-faults-"))
    path.chmod(0o755)  # the private cluster runs as the postgres user when we are root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres(faults_dir: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this session with the migrated schema in ``TEMPLATE_DB``."""
    pg = PrivatePostgres(faults_dir / "pg")
    pg.init()
    pg.start()
    try:
        pg.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        migrator = Platform(faults_dir, pg, TEMPLATE_DB, PrivateRedis(faults_dir / "redis0"))
        migrator.run(["manage.py", "migrate", "--noinput", "-v", "0"], timeout=300)
        yield pg
    finally:
        pg.stop("immediate")


@pytest.fixture(scope="module")
def exchange() -> Iterator[FakeBinance]:
    # Lively but light: 8 trades/s live, one every 2 s in the history the bots warm up on.
    with FakeBinance(
        history_s=30 * 60, history_rate=0.5, live_rate=8.0, symbols=("BTC/USDT",)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def platform(private_postgres: PrivatePostgres, exchange: FakeBinance, faults_dir: Path):
    """The platform on a fresh database and a private Redis: worker, beat, web and collector.

    Yields ``(platform, seed)``: ``seed`` is ``tests.faults.seed``'s output (instrument id,
    bot ids, a session key, each bot's ``last_processed_at`` when it started)."""
    dbname = f"faults_{uuid.uuid4().hex[:8]}"
    private_postgres.execute(f"CREATE DATABASE {dbname} TEMPLATE {TEMPLATE_DB}")
    directory = faults_dir / dbname
    directory.mkdir()
    redis = PrivateRedis(directory / "redis")
    redis.start()
    plat = Platform(directory, private_postgres, dbname, redis)
    try:
        seed = json.loads(
            plat.run(["-m", "tests.faults.seed", exchange.rest_url, str(N_BOTS)]).splitlines()[-1]
        )
        seed["started"] = dict(plat.query("SELECT id, last_processed_at FROM bots_bot"))
        plat.web_port = free_port()
        plat.spawn(
            "worker",
            [
                "-m",
                "celery",
                "-A",
                "tradeapp",
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--queues",
                "default,collect,bots,backtests",
                "--hostname",
                f"{dbname}@faults",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        plat.spawn(
            "beat",
            [
                "-m",
                "celery",
                "-A",
                "tradeapp",
                "beat",
                "--loglevel",
                "INFO",
                "--max-interval",
                "1",
                "--schedule",
                str(directory / "beat"),
            ],
        )
        plat.spawn(
            "web",
            [
                "-m",
                "uvicorn",
                "tradeapp.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(plat.web_port),
                "--lifespan",
                "off",
            ],
        )
        plat.collector_started_ms = int(time.time() * 1000)
        plat.spawn("collector", ["manage.py", "collect", "--flush-interval", "0.5"])
        yield plat, seed
    finally:
        plat.stop()
        redis.kill()
        try:
            private_postgres.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
            )
            private_postgres.execute(f"DROP DATABASE IF EXISTS {dbname}")
        except Exception:
            pass
