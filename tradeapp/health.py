"""Health of the parts the platform needs: database, Redis, at least one Celery worker, market
data collection, and, under `make run` (supervisord), the processes themselves."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from django.conf import settings
from django.db import connection

from tradeapp import supervise
from tradeapp.celery import app as celery_app
from tradeapp.redis_client import get_redis

logger = logging.getLogger(__name__)

# Seconds to wait for a worker to answer a ping.
WORKER_PING_TIMEOUT = 0.5


def _timed(check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check() or {}
        result = {"ok": True, **detail}
    except Exception as exc:  # noqa: BLE001 - any failure of a part means "down", with the reason
        logger.warning("health check %s failed: %s", check.__name__, exc)
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _redis() -> None:
    get_redis().ping()


def _workers() -> dict[str, Any]:
    replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT)
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        raise RuntimeError(f"no Celery worker answered within {WORKER_PING_TIMEOUT}s")
    return {"workers": workers}


# Seconds without a collector heartbeat after which market-data collection counts as down.
COLLECTOR_STALE_AFTER = 60


def _collection() -> dict[str, Any]:
    from marketdata.selectors import collection_overview

    overview = collection_overview()
    stale = [i["instrument"] for i in overview if i["heartbeat_age_s"] is None
             or i["heartbeat_age_s"] > COLLECTOR_STALE_AFTER]  # fmt: skip
    if stale:
        raise RuntimeError(f"collector silent for more than {COLLECTOR_STALE_AFTER}s: {stale}")
    lags = [i["lag_s"] for i in overview if i["lag_s"] is not None]
    return {
        "instruments": len(overview),
        "max_lag_s": max(lags) if lags else None,
        "rejects": sum(i["rejects"] for i in overview),
    }


def _processes() -> dict[str, Any]:
    # supervisord's own view (state, pid, uptime) over its unix socket and the events
    # listener's restart counts from a file: neither needs Redis, which may be what died.
    return supervise.overview(
        os.environ["SUPERVISOR_SERVER_URL"], settings.TRADEAPP_PROCESS_STATE_FILE
    )


def system_health() -> dict[str, Any]:
    """Check every part; ``ok`` is true only when all are up.

    ``collection`` is down when an active instrument's collector has not reported for
    ``COLLECTOR_STALE_AFTER`` seconds (with no active instrument it is up, with nothing to do).

    ``processes`` is there only when this process runs under supervisord (`make run` sets
    ``SUPERVISOR_SERVER_URL`` in its children): every process it runs with its state, pid,
    uptime and restarts, down when one is not starting or running (or supervisord does not
    answer). Elsewhere (systemd, the test suite) processes are someone else's business.
    """
    parts = {"database": _timed(_database), "redis": _timed(_redis)}
    if parts["redis"]["ok"]:
        parts["celery"] = _timed(_workers)
    else:
        # Workers are reached through Redis: with Redis down they cannot be asked.
        parts["celery"] = {"ok": False, "error": "broker (Redis) unreachable", "ms": 0.0}
    if parts["database"]["ok"]:
        parts["collection"] = _timed(_collection)
    else:
        parts["collection"] = {"ok": False, "error": "database unreachable", "ms": 0.0}
    if os.environ.get("SUPERVISOR_SERVER_URL"):
        parts["processes"] = _timed(_processes)
    return {"ok": all(p["ok"] for p in parts.values()), **parts}
