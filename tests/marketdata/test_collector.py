"""DataCollector end to end on the real database and Redis, fed by a scripted provider.

The provider here is a plain list of trades (what a provider is: a source of raw rows), so each
test controls exactly which rows arrive and when; the ccxt, simulated and replay providers have
tests of their own.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from marketdata.aggregation import aggregate_arrays
from marketdata.collector import DataCollector, TickRejected, candle_closed, validate_trade
from marketdata.models import Candle, CollectionStatus, Exchange, RawTick, RejectedTick
from marketdata.providers.base import Candle as CandleDict
from marketdata.providers.base import DataProvider, ProviderError, RawTrade
from marketdata.services import instrument_ensure, ms_to_datetime
from tradeapp.redis_client import get_redis

T0 = 1_795_000_000_000 - (1_795_000_000_000 % 3_600_000)  # an hour boundary, epoch ms
MIN = 60_000


class ScriptedProvider(DataProvider):
    exchange_id = "scripted"

    def __init__(self, trades: Sequence[dict], candles: Sequence[CandleDict] = ()) -> None:
        super().__init__()
        self.trades = list(trades)
        self.candles = list(candles)
        self.closed = False

    async def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[RawTrade]:
        for trade in self.trades:
            yield {"exchange": self.exchange_id, **trade}
        await asyncio.Event().wait()  # a live stream stays open

    async def fetch_candles(self, symbol, timeframe, since_ms, *, limit=1000):
        return [c for c in self.candles if c["timestamp"] > since_ms][:limit]

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def trade(i: int, ts: int, price: float = 100.0, amount: float = 1.0, **extra) -> dict:
    return {
        "symbol": "BTC/USDT",
        "id": str(i),
        "timestamp": ts,
        "price": price,
        "amount": amount,
        "side": "buy",
        **extra,
    }


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(ccxt_id="scripted", name="Scripted", kind="ccxt")
    return instrument_ensure(exchange_id="scripted", symbol="BTC/USDT")


async def collect(provider: DataProvider, clock: Clock, *, settle_ms: int | None = None) -> None:
    """Run a collector until the provider's rows are processed and flushed, then stop it."""
    collector = DataCollector(clock=clock, flush_interval=0.05)
    collector.register_provider("scripted", provider)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(["BTC/USDT"], stop=stop))
    n = len(getattr(provider, "trades", []))
    for _ in range(400):
        await asyncio.sleep(0.02)
        done = await sync_to_async(lambda: RawTick.objects.count() + RejectedTick.objects.count())()
        if done >= n and collector._buffers.ticks == []:
            break
    if settle_ms is not None:
        clock.ms = settle_ms
        await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_validate_trade_accepts_a_good_row():
    tick = validate_trade(
        trade(1, T0 + 5, price="101.5", amount=0.25),
        now_ms=T0 + 10,
        last_closed_ms=T0,
        max_future_ms=60_000,
    )
    assert (tick.ts_ms, tick.price, tick.amount, tick.trade_id) == (
        T0 + 5,
        Decimal("101.5"),
        Decimal("0.25"),
        "1",
    )


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"price": "abc"}, "price is not a number"),
        ({"price": math.nan}, "price is not finite"),
        ({"price": math.inf}, "price is not finite"),
        ({"price": 0}, "price is not positive"),
        ({"price": -3}, "price is not positive"),
        ({"price": None}, "price is missing"),
        ({"amount": -1}, "amount is not positive"),
        ({"amount": "x1"}, "amount is not a number"),
        ({"timestamp": None}, "timestamp is missing"),
        ({"timestamp": "soon"}, "timestamp is not a number"),
        ({"timestamp": 1.5}, "not a positive integer"),
        ({"timestamp": T0 + 3_600_000}, "in the future"),
        ({"timestamp": T0 - MIN}, "not after the last closed candle"),
        ({"id": "x" * 65}, "trade id"),
    ],
)
def test_validate_trade_rejects_bad_rows_with_reason(row, reason):
    with pytest.raises(TickRejected, match=reason):
        validate_trade(
            {**trade(1, T0 + 5), **row}, now_ms=T0 + 10, last_closed_ms=T0, max_future_ms=60_000
        )


@pytest.mark.asyncio
async def test_collector_stores_ticks_and_builds_candles_in_all_timeframes(instrument):
    rng = np.random.default_rng(3)
    n = 900
    ts = np.sort(rng.integers(T0 + 1, T0 + 16 * MIN, n))
    # Exchange-like prices and amounts (few decimals): stored exactly on SQLite and PostgreSQL.
    price = np.round(100 + np.cumsum(rng.normal(0, 0.1, n)), 2)
    volume = np.round(rng.uniform(0.01, 2, n), 4)
    trades = [
        trade(i, int(t), float(p), float(v))
        for i, (t, p, v) in enumerate(zip(ts, price, volume, strict=True))
    ]
    clock = Clock(T0 + 16 * MIN + 5_000)

    got_signals: list[dict] = []

    def on_closed(sender, **kwargs):
        got_signals.append(kwargs)

    candle_closed.connect(on_closed)
    pubsub = get_redis().pubsub()
    pubsub.subscribe("market_data:BTC/USDT")
    try:
        await collect(ScriptedProvider(trades), clock)
    finally:
        candle_closed.disconnect(on_closed)

    assert await sync_to_async(RawTick.objects.count)() == n
    for timeframe in ("1m", "5m", "15m"):
        everything = aggregate_arrays(ts, price, volume, timeframe)
        # Only final candles are stored: the 5m and 15m candles still open at T0+16m are not.
        final = everything["timestamp"] <= T0 + 16 * MIN
        expected = {k: v[final] for k, v in everything.items()}
        stored = await sync_to_async(list)(
            Candle.objects.filter(instrument=instrument, timeframe=timeframe)
            .order_by("close_time")
            .values_list("close_time", "open", "high", "low", "close", "volume", "trades")
        )
        assert [int(r[0].timestamp() * 1000) for r in stored] == expected["timestamp"].tolist()
        assert [float(r[1]) for r in stored] == expected["open"].tolist()
        assert [float(r[2]) for r in stored] == expected["high"].tolist()
        assert [float(r[3]) for r in stored] == expected["low"].tolist()
        assert [float(r[4]) for r in stored] == expected["close"].tolist()
        np.testing.assert_allclose([float(r[5]) for r in stored], expected["volume"], rtol=1e-9)
        assert [r[6] for r in stored] == expected["trades"].tolist()

    assert not await sync_to_async(
        Candle.objects.filter(close_time__gt=ms_to_datetime(T0 + 16 * MIN)).exists
    )()
    closed_1m = [s for s in got_signals if s["timeframe"] == "1m"]
    assert [s["close_ms"] for s in closed_1m] == [T0 + k * MIN for k in range(1, 17)]
    assert {s["close_ms"] for s in got_signals if s["timeframe"] == "15m"} == {T0 + 15 * MIN}

    messages = []
    while (m := pubsub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message":
            messages.append(json.loads(m["data"]))
    pubsub.close()
    closed_events = [m for m in messages if m["type"] == "candle.closed"]
    assert {(m["timeframe"], m["candle"]["timestamp"]) for m in closed_events} >= {
        ("1m", T0 + MIN),
        ("5m", T0 + 5 * MIN),
        ("15m", T0 + 15 * MIN),
    }
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs)

    status = await sync_to_async(CollectionStatus.objects.get)(instrument=instrument)
    assert status.ticks_count == n and status.rejects_count == 0
    assert status.state == CollectionStatus.State.STOPPED


@pytest.mark.asyncio
async def test_collector_rejects_bad_rows_keeps_them_and_continues(instrument):
    rows = [
        trade(1, T0 + 1_000),
        trade(2, T0 + 2_000, price="abc"),
        trade(3, T0 + 3_000, price=-5),
        trade(4, T0 + 4_000, amount=-1),
        trade(5, T0 + 5_000, price=math.nan),
        trade(6, T0 + 10 * 3_600_000),  # far in the future
        trade(1, T0 + 6_000),  # duplicate trade id
        {**trade(7, T0 + 7_000), "symbol": "DOGE/XYZ"},  # unknown symbol
        trade(8, T0 + 8_000, price=101),
    ]
    await collect(ScriptedProvider(rows), Clock(T0 + 30_000))

    assert await sync_to_async(list)(
        RawTick.objects.order_by("time").values_list("trade_id", flat=True)
    ) == ["1", "8"]
    rejects = await sync_to_async(list)(
        RejectedTick.objects.order_by("id").values("symbol", "reason", "payload")
    )
    reasons = [r["reason"] for r in rejects]
    assert len(rejects) == 7
    for fragment in [
        "price is not a number",
        "price is not positive",
        "amount is not positive",
        "price is not finite",
        "in the future",
        "duplicate trade id 1",
        "unknown symbol 'DOGE/XYZ'",
    ]:
        assert any(fragment in r for r in reasons), fragment
    # The raw payload is kept, NaN included (as text: JSON has no NaN).
    nan_row = next(r for r in rejects if "finite" in r["reason"])
    assert nan_row["payload"]["price"] == "nan"
    status = await sync_to_async(CollectionStatus.objects.get)(instrument=instrument)
    assert (status.ticks_count, status.rejects_count) == (2, 6)  # the unknown symbol has none


@pytest.mark.asyncio
async def test_collector_restart_restores_the_open_candle_and_refuses_replays(instrument):
    first = [trade(i, T0 + MIN + i * 1_000, price=100 + i) for i in range(1, 30)]  # in (1m, 2m]
    pubsub = get_redis().pubsub()
    pubsub.subscribe("market_data:BTC/USDT")
    await collect(ScriptedProvider(first), Clock(T0 + MIN + 31_000))
    updates = []
    while (m := pubsub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message" and json.loads(m["data"])["type"] == "candle.update":
            updates.append(json.loads(m["data"])["candle"])
    pubsub.close()
    # The in-progress candle is streamed for live charts (stamped with its future close time).
    assert updates and updates[-1]["timestamp"] == T0 + 2 * MIN and updates[-1]["close"] == 129
    assert await sync_to_async(Candle.objects.filter(timeframe="1m").count)() == 0  # still open

    # Restarted: the provider replays what we already have, then new trades.
    second = [
        *first[-5:],
        *[trade(100 + i, T0 + MIN + 30_000 + i * 1_000, price=50) for i in range(5)],
        trade(200, T0 + 2 * MIN + 5_000, price=77),
    ]
    # The restarted collector takes minutes that may have missed trades from the provider;
    # this one has no candles to offer, so the candle is built from the stored and new ticks.
    await collect(ScriptedProvider(second), Clock(T0 + 3 * MIN + 10_000))

    candle = await sync_to_async(Candle.objects.get)(
        timeframe="1m", close_time=ms_to_datetime(T0 + 2 * MIN)
    )
    assert (float(candle.open), float(candle.high), float(candle.low), float(candle.close)) == (
        101,
        129,
        50,
        50,
    )
    assert candle.trades == 34
    assert await sync_to_async(RawTick.objects.count)() == 29 + 5 + 1
    replays = await sync_to_async(
        RejectedTick.objects.filter(reason__startswith="duplicate").count
    )()
    assert replays == 5


@pytest.mark.asyncio
async def test_collector_takes_missed_minutes_from_the_provider_after_restart(instrument):
    await collect(ScriptedProvider([trade(1, T0 + 10_000)]), Clock(T0 + 2 * MIN))
    # The collector was down from T0+2m to T0+5m30s; the exchange knows those minutes.
    exchange_candles = [
        {
            "timestamp": T0 + k * MIN,
            "open": 10.0 + k,
            "high": 200.0 + k,
            "low": 5.0,
            "close": 11.0,
            "volume": 3.0,
        }
        for k in range(2, 6)
    ]
    await collect(
        ScriptedProvider([trade(2, T0 + 5 * MIN + 40_000)], exchange_candles),
        Clock(T0 + 5 * MIN + 50_000),
        settle_ms=T0 + 7 * MIN,
    )
    rows = await sync_to_async(list)(
        Candle.objects.filter(timeframe="1m")
        .order_by("close_time")
        .values_list("close_time", "source")
    )
    closes = [int(r[0].timestamp() * 1000) for r in rows]
    assert closes[:5] == [T0 + k * MIN for k in range(1, 6)]
    assert dict(zip(closes, [r[1] for r in rows], strict=True))[T0 + 3 * MIN] == "exchange"
    five = await sync_to_async(Candle.objects.get)(
        timeframe="5m", close_time=ms_to_datetime(T0 + 5 * MIN)
    )
    assert float(five.high) == 205.0  # rebuilt from the refilled minutes


class BrokenProvider(ScriptedProvider):
    """Yields its rows, then fails the way a misconfigured exchange does."""

    def __init__(self, trades):
        super().__init__(trades)
        self.starts = 0

    async def stream_trades(self, symbols):
        self.starts += 1
        for row in self.trades:
            yield {"exchange": self.exchange_id, **row}
        raise ProviderError("exchange says: invalid API key")


@pytest.mark.asyncio
async def test_collector_reports_a_failing_stream_and_restarts_it(instrument):
    provider = BrokenProvider([trade(1, T0 + 1_000)])
    collector = DataCollector(clock=Clock(T0 + 5_000), flush_interval=0.05, restart_delay=0.1)
    collector.register_provider("scripted", provider)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(["BTC/USDT"], stop=stop))
    for _ in range(200):
        await asyncio.sleep(0.02)
        status = await sync_to_async(CollectionStatus.objects.filter(instrument=instrument).first)()
        if provider.starts >= 2 and status is not None and status.last_error:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert provider.starts >= 2  # restarted, the process kept running
    status = await sync_to_async(CollectionStatus.objects.get)(instrument=instrument)
    assert "invalid API key" in status.last_error
    assert status.last_error_at is not None
    # The restarted stream's repeat of trade 1 is refused as a duplicate; it is stored once.
    assert await sync_to_async(RawTick.objects.count)() == 1


@pytest.mark.asyncio
async def test_collector_finishes_higher_candles_across_a_quiet_spell(instrument):
    # No trade from 3m30s to 7m10s: the 5m candle closing at 5m is final once time passes it.
    rows = [trade(1, T0 + 30_000, price=10), trade(2, T0 + 210_000, price=12),
            trade(3, T0 + 430_000, price=11)]  # fmt: skip
    got: list[tuple[str, int]] = []

    def on_closed(sender, **kwargs):
        got.append((kwargs["timeframe"], kwargs["close_ms"]))

    candle_closed.connect(on_closed)
    try:
        await collect(ScriptedProvider(rows), Clock(T0 + 8 * MIN + 5_000))
    finally:
        candle_closed.disconnect(on_closed)
    five = await sync_to_async(list)(
        Candle.objects.filter(timeframe="5m").values_list("close_time", "open", "high", "close")
    )
    assert [
        (int(c[0].timestamp() * 1000), float(c[1]), float(c[2]), float(c[3])) for c in five
    ] == [(T0 + 5 * MIN, 10.0, 12.0, 12.0)]
    assert ("5m", T0 + 5 * MIN) in got and ("5m", T0 + 10 * MIN) not in got
    assert [c for tf, c in got if tf == "1m"] == [T0 + MIN, T0 + 4 * MIN, T0 + 8 * MIN]


class FlakyProvider(ScriptedProvider):
    """Yields its trades, then reports a dropped connection (as CcxtProvider does)."""

    async def stream_trades(self, symbols):
        for row in self.trades:
            yield {"exchange": self.exchange_id, **row}
        self.report("reconnecting", "connection dropped")
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_collector_takes_minutes_around_an_outage_from_the_exchange(instrument):
    exchange_minute = {"timestamp": T0 + 2 * MIN, "open": 1.0, "high": 9.0, "low": 0.5,
                       "close": 2.0, "volume": 7.0}  # fmt: skip
    provider = FlakyProvider([trade(1, T0 + MIN + 5_000, price=3.0)], [exchange_minute])
    # Started at T0+10s (start-up covers the minute closing at T0+1m only); the drop is
    # reported during the next minute.
    await collect(provider, Clock(T0 + 10_000), settle_ms=T0 + 2 * MIN + 5_000)
    candle = await sync_to_async(Candle.objects.get)(
        timeframe="1m", close_time=ms_to_datetime(T0 + 2 * MIN)
    )
    # The exchange knows the trades we may have missed while disconnected.
    assert (candle.source, float(candle.high), float(candle.volume)) == ("exchange", 9.0, 7.0)
    status = await sync_to_async(CollectionStatus.objects.get)(instrument=instrument)
    assert "connection dropped" in status.last_error
