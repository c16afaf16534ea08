"""Market data for the browser tests: history stored as candles, then live trades through the
real ``DataCollector`` (validation, raw ticks, 1m and higher candles, ``candle.closed`` on
Redis and the Channels groups, the bots woken through the real Celery worker). Only the
exchange is replaced: a scripted feed of trades, in a thread with its own event loop (the
browser's driver keeps one in the test's thread)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence

from marketdata.collector import DataCollector
from marketdata.models import Candle, Exchange, Instrument
from marketdata.providers.base import DataProvider
from marketdata.services import candles_upsert, instrument_ensure

MIN = 60_000
EXCHANGE = "scripted"


class ScriptedFeed(DataProvider):
    exchange_id = EXCHANGE

    def __init__(self, trades: Sequence[dict]) -> None:
        super().__init__()
        self.trades = list(trades)

    async def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[dict]:
        for trade in self.trades:
            yield {"exchange": EXCHANGE, **trade}
        await asyncio.Event().wait()  # a live stream stays open

    async def fetch_candles(self, symbol, timeframe, since_ms, *, limit=1000):
        return []

    async def close(self) -> None:
        return None


def instrument_with_history(symbol: str = "BTC/USDT", minutes: int = 120) -> Instrument:
    """An instrument whose 1m candles end with the one that closed a minute ago: a wave, so
    moving averages cross and the strategies decide."""
    Exchange.objects.get_or_create(
        ccxt_id=EXCHANGE, defaults={"name": "Scripted exchange", "kind": "ccxt"}
    )
    instrument = instrument_ensure(exchange_id=EXCHANGE, symbol=symbol)
    last_close = int(time.time() * 1000) // MIN * MIN - MIN
    rows = []
    for i in range(minutes):
        close_ms = last_close - (minutes - 1 - i) * MIN
        mid = 100 + 8 * math.sin(i / 9)
        rows.append({"timestamp": close_ms, "open": mid - 0.2, "high": mid + 0.6,
                     "low": mid - 0.6, "close": mid + 0.2, "volume": 3 + i % 5,
                     "trades": 4})  # fmt: skip
    candles_upsert(instrument_id=instrument.pk, timeframe="1m", candles=rows)
    return instrument


def close_next_minute(instrument: Instrument, prices: Sequence[float], timeout: float = 30) -> int:
    """Trades in the minute after the last stored candle, through a real collector, until that
    candle is stored (closed); returns its close time (epoch ms)."""
    last = Candle.objects.filter(instrument=instrument, timeframe="1m").latest("close_time")
    close_ms = int(last.close_time.timestamp() * 1000) + MIN
    while time.time() * 1000 < close_ms:  # the minute must be over before it can close
        time.sleep(0.1)
    step = (MIN - 2_000) // max(1, len(prices))
    trades = [
        {"symbol": instrument.symbol, "id": f"e2e-{close_ms}-{i}",
         "timestamp": close_ms - MIN + 1_000 + i * step, "price": price, "amount": 0.5 + i,
         "side": "buy"}
        for i, price in enumerate(prices)
    ]  # fmt: skip
    errors: list[BaseException] = []

    async def run() -> None:
        collector = DataCollector(flush_interval=0.05, close_grace_ms=0)
        collector.register_provider(EXCHANGE, ScriptedFeed(trades))
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run([instrument.symbol], stop=stop))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                stored = await asyncio.to_thread(
                    Candle.objects.filter(
                        instrument=instrument, timeframe="1m", close_time__gte=last.close_time
                    ).count
                )
                if stored >= 2:
                    await asyncio.sleep(0.2)  # the announcement follows the commit
                    break
            else:
                raise AssertionError(f"the candle closing at {close_ms} was not stored")
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=target, name="e2e-collector")
    thread.start()
    thread.join(timeout + 20)
    if errors:
        raise errors[0]
    return close_ms
