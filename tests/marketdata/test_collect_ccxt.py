"""The whole path against a local exchange: the real ccxt client (REST and WebSocket) through our
provider, collector and backfill, with faults injected, compared with the exchange's own candles.

The collector test lives through a real minute boundary (candles close on the clock): 15-75 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from marketdata.backfill import backfill
from marketdata.collector import DataCollector
from marketdata.models import Candle, CollectionStatus, Exchange, RawTick
from marketdata.providers.factory import provider_for
from marketdata.services import candles_arrays, instrument_ensure, ms_to_datetime
from tests.exchange_server import FakeBinance

MIN = 60_000


@pytest.fixture
def exchange_server():
    with FakeBinance(
        history_s=20 * 60, history_rate=4.0, live_rate=12.0, symbols=("BTC/USDT",)
    ) as server:
        yield server


@pytest.fixture
def binance(transactional_db, exchange_server):
    exchange = Exchange.objects.create(
        ccxt_id="binance", name="Local Binance", kind="ccxt", api_base_url=exchange_server.rest_url
    )
    instrument_ensure(exchange_id="binance", symbol="BTC/USDT")
    return exchange


def exchange_minutes(server: FakeBinance, start_ms: int, end_ms: int) -> dict[int, list[float]]:
    """The server's 1m klines, re-stamped to close time, with close in (start_ms, end_ms]."""
    rows = server.klines("BTC/USDT", "1m", start=start_ms, limit=1000)
    out = {}
    for row in rows:
        close = int(row[0]) + MIN  # Binance stamps the open; ours is the close
        if start_ms < close <= end_ms and float(row[5]) > 0:
            out[close] = [float(row[1]), float(row[2]), float(row[3]), float(row[4])]
    return out


def test_backfill_from_local_exchange_has_close_time_stamps(binance, exchange_server):
    now = exchange_server.now_ms()
    since = (now - 15 * MIN) // MIN * MIN
    call_command("backfill", "binance", "BTC/USDT", "--since", str(since))
    instrument = binance.instruments.get()
    stored = candles_arrays(instrument_id=instrument.pk, timeframe="1m")
    want = exchange_minutes(exchange_server, since, now)
    closes = stored["timestamp"].tolist()
    # Every closed minute, stamped with its close (open + 60 s); the open minute is not stored.
    assert closes == sorted(c for c in want if c <= now)
    assert closes[0] == since + MIN and closes[-1] <= now
    for i, close in enumerate(closes):
        assert [stored[k][i] for k in ("open", "high", "low", "close")] == want[close]


@pytest.mark.asyncio
async def test_collector_on_ccxt_survives_faults_with_no_missing_candle(binance, exchange_server):
    instrument = await sync_to_async(binance.instruments.get)()
    start = exchange_server.now_ms()
    history_from = (start - 10 * MIN) // MIN * MIN
    history = await sync_to_async(provider_for)(binance)
    await backfill(history, instrument_id=instrument.pk, symbol="BTC/USDT", timeframe="1m",
                   since_ms=history_from)  # fmt: skip
    await history.close()

    collector = DataCollector(flush_interval=0.2)
    collector.register_provider("binance", await sync_to_async(provider_for)(binance))
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(["binance:BTC/USDT"], stop=stop))
    try:
        await _wait_for(lambda: RawTick.objects.count() > 10, 30, "first live ticks")
        # Faults while collecting: the WebSocket dropped, a burst of 503s and 429s, then the
        # exchange unreachable for a few seconds.
        exchange_server.drop_ws(abrupt=True)
        exchange_server.fail_next(3, 503)
        exchange_server.fail_next(2, 429)
        await asyncio.sleep(3)
        exchange_server.refuse_for(4)
        await asyncio.sleep(6)
        # Collect until the minute after the faults has closed.
        target = (exchange_server.now_ms() // MIN + 1) * MIN
        await _wait_for(
            lambda: Candle.objects.filter(
                timeframe="1m", close_time__gte=ms_to_datetime(target)
            ).exists(),
            160,
            "a minute closed after the faults",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    stored = await sync_to_async(candles_arrays)(instrument_id=instrument.pk, timeframe="1m")
    closes = stored["timestamp"].tolist()
    want = exchange_minutes(exchange_server, history_from, closes[-1])
    # No missing candle: every minute the exchange has, we have, before and after the faults.
    assert set(want) <= set(closes), sorted(set(want) - set(closes))
    # Tick-built minutes equal the exchange's own candles (ours hold (t-1m, t], Binance's
    # [t-1m, t): a trade on the exact boundary millisecond may sit one candle apart).
    mismatched = [
        c
        for i, c in enumerate(closes)
        if c in want and [stored[k][i] for k in ("open", "high", "low", "close")] != want[c]
    ]
    assert len(mismatched) <= 1, mismatched
    status = await sync_to_async(CollectionStatus.objects.get)(instrument=instrument)
    # Live trades were collected before and after the faults (how many depends on how long the
    # provider backs off, which a loaded machine stretches).
    assert status.ticks_count == await sync_to_async(RawTick.objects.count)() > 10
    ids = await sync_to_async(list)(RawTick.objects.values_list("trade_id", flat=True))
    assert len(ids) == len(set(ids))  # nothing stored twice across reconnects
    server_ids = {str(t["a"]) for t in exchange_server.trades("BTC/USDT")}  # aggTrade ids
    assert set(ids) <= server_ids


async def _wait_for(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not await sync_to_async(condition)():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.5)


def test_backfill_reports_an_unreachable_exchange_clearly(transactional_db):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    Exchange.objects.create(ccxt_id="binance", name="Down", kind="ccxt",
                            api_base_url=f"http://127.0.0.1:{port}")  # fmt: skip
    instrument_ensure(exchange_id="binance", symbol="BTC/USDT")
    with pytest.raises(CommandError, match="binance did not answer: "):
        call_command("backfill", "binance", "BTC/USDT", "--since", "2026-01-01")
