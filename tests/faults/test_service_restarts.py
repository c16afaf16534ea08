"""Services restarted under load: Redis, then PostgreSQL, while ticks are collected and bots run.
Nothing is lost, nothing doubled, nothing half-written, and every process carries on.

The platform's real processes (``manage.py collect`` on the local exchange through the real ccxt
client, a Celery worker, Celery beat, uvicorn) run on a private PostgreSQL cluster and a private
Redis (``conftest``, ``support``): the machine's shared services are never touched. The two
tests share one platform, in order: each outage straddles a minute boundary, so a candle closes
while the service is down.

Redis (``test_redis_restart``): SIGKILL 4 s before a boundary, started again empty 8 s later.
The candle closing meanwhile is written to the database (events are best effort), but its
announcement and the bots' wake-up fail; sequence counters restart from zero; queued Celery
messages and Channels group memberships are gone. What closes the gaps: the worker and beat
reconnect to the broker on their own; beat's ``bots.catch_up`` (every 5 s here, every minute by
default) queues the candles the bots have not processed, and they are processed in order, once
(``last_processed_at``, unique signals and client order ids); a WebSocket client whose connection
died reconnects and gets a snapshot, one that sees ``seq`` jump asks for a fresh snapshot.

PostgreSQL (``test_postgres_restart``): ``pg_ctl stop -m immediate`` (a crash: every session cut
mid-transaction, crash recovery on start) 1 s before a boundary, started again 6 s later. The
collector keeps its unwritten ticks and closed candles and writes them once the database is
back (one transaction per flush, so a cut flush left nothing); the worker and beat reconnect;
the bots then process the candle in order.

Checked after each outage against the exchange's own records: every trade it made between the
first and last one collected is a raw tick exactly once; every 1m candle exists, stamped with its
close time, equal to the exchange's klines; each tick-built candle holds exactly its ticks; the
status counter equals the stored ticks; every bot decided every candle since its start once and
is still running; filled orders have their fills, positions equal the fills.

Bounded: about 2-3 minutes for both, most of it waiting for real minute boundaries.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.faults import checks
from tests.faults.checks import MIN, WatchingClient

# Profile-independent (private services of their own): ``-m "not service_restarts"`` leaves
# them out of a run that has them elsewhere.
pytestmark = pytest.mark.service_restarts


def _healthy(plat) -> bool:
    url = f"http://127.0.0.1:{plat.web_port}/healthz"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status == 200


def _outage_at(plat, second: int, *, after_ms: int) -> int:
    """Wait until ``second`` s into the minute before the first candle closing at or after
    ``after_ms``; returns that candle's close time."""
    return checks.wait_for_second(second, not_before=(after_ms - (60 - second) * 1000) / 1000)


def _verify(plat, exchange, seed, started) -> dict:
    history_close = max(started.values())
    ticks = checks.ticks_exactly_once(plat, exchange)
    candles = checks.candles_match_exchange(plat, exchange, checks.ms(history_close) - 20 * MIN)
    held = checks.candles_hold_their_ticks(plat, checks.ms(history_close))
    counted = checks.status_counts_match(plat)
    bots = checks.bots_processed_every_candle_once(plat, seed["bots"], started)
    return {**ticks, **candles, "tick_built_candles_checked": held, "status_ticks": counted, **bots}


def test_redis_restart(platform, exchange, record_property):
    plat, seed = platform
    started = seed["started"]
    plat.wait_for(
        lambda: plat.value("SELECT COUNT(*) FROM marketdata_rawtick") > 20,
        60,
        "the collector stores live ticks",
    )
    client = WatchingClient(
        f"ws://127.0.0.1:{plat.web_port}/ws/market/BTC/USDT?limit=5",
        seed["session"],
        f"http://127.0.0.1:{plat.web_port}",
    ).start()
    try:
        plat.wait_for(lambda: client.events, 30, "the WebSocket client receives candle updates")
        # The first boundary the collector lives through (with 20 s of ticks before it): its
        # minute comes from the exchange (the collector missed its first trades).
        boundary = _outage_at(plat, 56, after_ms=plat.collector_started_ms + 24_000)
        plat.redis.kill()
        down_at = time.time()
        time.sleep(8)  # the candle closes and is written meanwhile; trades keep coming
        plat.redis.start()
        up_at = time.time()
        plat.wait_for(
            lambda: (
                plat.value("SELECT MIN(last_processed_at) FROM bots_bot")
                >= checks.datetime_of(boundary)
            ),
            60,
            "the bots catch up the candle that closed during the outage",
        )
        caught_up = time.time() - up_at
        plat.wait_for(
            lambda: [s for s in client.snapshots if s[0] > up_at],
            30,
            "the WebSocket client gets a fresh snapshot",
        )
        plat.wait_for(
            lambda: [e for e in client.events if e[0] > up_at + 1],
            30,
            "events reach the WebSocket client again",
        )
        resnapshot = min(s[0] for s in client.snapshots if s[0] > up_at) - up_at
        assert plat.wait_for(lambda: _healthy(plat), 30, "/healthz answers 200")
        assert sorted(plat.alive()) == ["beat", "collector", "web", "worker"], plat.logs()
    finally:
        client.stop()
    # A snapshot after the restart repaired the view, and every event after it continues its
    # baseline: the client saw no gap it did not repair.
    last_snapshot = max(s[0] for s in client.snapshots)
    later = [seq for at, seq in client.events if at > last_snapshot]
    assert later == list(range(later[0], later[0] + len(later))), later[:50]
    figures = _verify(plat, exchange, seed, started)
    assert figures["last_close"] >= boundary
    figures |= {
        "redis_down_s": round(up_at - down_at, 1),
        "bots_caught_up_after_s": round(caught_up, 1),
        "ws_snapshot_after_s": round(resnapshot, 1),
        "ws_reconnects": client.connects - 1,
        "ws_seq_gaps_repaired": len(client.gaps),
    }
    record_property("figures", figures)
    print("\nredis restart:", figures)


def test_postgres_restart(platform, exchange, record_property):
    plat, seed = platform
    started = seed["started"]
    # A candle the collector builds from its own ticks: not the minute it started in (that one
    # comes from the exchange), counting 15 s for its start.
    first_own = -(-(plat.collector_started_ms + 15_000) // MIN) * MIN + MIN
    boundary = _outage_at(plat, 59, after_ms=first_own)
    plat.pg.stop("immediate")  # a crash: sessions cut mid-transaction
    down_at = time.time()
    time.sleep(6)  # the candle closes meanwhile; the collector buffers what it cannot write
    plat.pg.start()
    up_at = time.time()
    before = plat.value("SELECT COUNT(*) FROM marketdata_rawtick")
    plat.wait_for(
        lambda: plat.value("SELECT COUNT(*) FROM marketdata_rawtick") > before,
        60,
        "the collector writes again",
    )
    collector_back = time.time() - up_at
    plat.wait_for(
        lambda: (
            plat.value("SELECT MIN(last_processed_at) FROM bots_bot")
            >= checks.datetime_of(boundary)
        ),
        60,
        "the bots process the candle that closed during the outage",
    )
    bots_back = time.time() - up_at
    assert plat.wait_for(lambda: _healthy(plat), 30, "/healthz answers 200")
    assert sorted(plat.alive()) == ["beat", "collector", "web", "worker"], plat.logs()
    collector = plat.processes["collector"].proc
    collector.terminate()  # a clean stop writes what is buffered
    assert collector.wait(30) == 0, plat.logs()
    figures = _verify(plat, exchange, seed, started)
    assert figures["last_close"] >= boundary
    assert figures["tick_built_candles_checked"] >= 1
    figures |= {
        "postgres_down_s": round(up_at - down_at, 1),
        "collector_writing_after_s": round(collector_back, 1),
        "bots_caught_up_after_s": round(bots_back, 1),
    }
    record_property("figures", figures)
    print("\npostgres restart:", figures)
