"""SimulatedProvider: deterministic trades, a live stream on the (sped-up) clock, closed candles."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.aggregation import aggregate_arrays
from marketdata.providers.base import ProviderError
from marketdata.providers.simulated import SimulatedProvider

# A fixed "now" (2023-11-14 22:15:23.456 UTC): tests that do not stream use a frozen clock.
NOW_S = 1_700_000_123.456
NOW_MS = int(NOW_S * 1000)
MINUTE = 60_000
BTC, ETH = "BTC/USDT", "ETH/USDT"


def frozen(seed: int = 7, **kwargs) -> SimulatedProvider:
    return SimulatedProvider(seed=seed, clock=lambda: NOW_S, **kwargs)


def reference_candles(trades: list[dict], rule: str) -> list[dict]:
    """Right-closed, right-labelled OHLCV by pandas, independent of marketdata.aggregation."""
    df = pd.DataFrame(trades)
    df.index = pd.to_datetime(df["timestamp"], unit="ms", utc=True)
    res = (
        df.resample(rule, closed="right", label="right", origin="epoch")
        .agg({"price": ["first", "max", "min", "last"], "amount": "sum", "id": "count"})
        .dropna()
    )
    res.columns = ["open", "high", "low", "close", "volume", "n"]
    res = res[res["n"] > 0]
    stamps = (res.index.as_unit("ms").asi8).tolist()
    return [
        {"timestamp": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, (o, h, lo, c, v) in zip(
            stamps,
            res[["open", "high", "low", "close", "volume"]].itertuples(index=False),
            strict=True,
        )
    ]


def assert_candles_equal(got: list[dict], want: list[dict]) -> None:
    assert [c["timestamp"] for c in got] == [c["timestamp"] for c in want]
    for g, w in zip(got, want, strict=True):
        assert (g["open"], g["high"], g["low"], g["close"]) == (
            w["open"],
            w["high"],
            w["low"],
            w["close"],
        )
        assert g["volume"] == pytest.approx(w["volume"], rel=1e-12)


# --------------------------------------------------------------------------------- determinism


def test_trades_between_same_for_any_chunking_and_instance():
    start, end = NOW_MS - 20 * MINUTE - 1234, NOW_MS - 777
    whole = frozen().trades_between(BTC, start, end)
    # another instance, another clock, chunks that cut blocks anywhere, asked for in reverse
    other = SimulatedProvider(seed=7, clock=lambda: NOW_S + 86_400 * 30)
    cuts = [start, start + 1, start + 59_999, start + 3 * MINUTE, NOW_MS - 5 * MINUTE - 1, end]
    pieces = [other.trades_between(BTC, a, b) for a, b in reversed(list(itertools.pairwise(cuts)))]
    assert [t for piece in reversed(pieces) for t in piece] == whole
    assert len(whole) > 20 * 60 * 5 * 0.7


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    offset=st.integers(min_value=-(10**9), max_value=10**9),
    length=st.integers(min_value=1, max_value=10 * MINUTE),
    split=st.floats(min_value=0, max_value=1),
)
def test_trades_between_split_anywhere_equals_whole(offset, length, split):
    provider = frozen(seed=3)
    start = NOW_MS + offset
    end = start + length
    mid = start + int(length * split)
    whole = provider.trades_between(ETH, start, end)
    assert (
        provider.trades_between(ETH, start, mid) + provider.trades_between(ETH, mid, end) == whole
    )
    assert all(start < t["timestamp"] <= end for t in whole)


def test_seeds_and_symbols_give_different_walks():
    start, end = NOW_MS - 10 * MINUTE, NOW_MS
    a = frozen(seed=1).trades_between(BTC, start, end)
    b = frozen(seed=2).trades_between(BTC, start, end)
    assert [t["timestamp"] for t in a] != [t["timestamp"] for t in b]
    assert [t["price"] for t in a[:50]] != [t["price"] for t in b[:50]]
    same_start = frozen(symbols={BTC: 100.0, ETH: 100.0})
    btc = same_start.trades_between(BTC, start, end)
    eth = same_start.trades_between(ETH, start, end)
    assert [t["price"] for t in btc[:50]] != [t["price"] for t in eth[:50]]


def test_trades_are_well_formed_and_continuous():
    provider = frozen()
    start, end = NOW_MS - 60 * MINUTE, NOW_MS
    trades = provider.trades_between(BTC, start, end)
    ts = np.array([t["timestamp"] for t in trades])
    prices = np.array([t["price"] for t in trades])
    assert all(type(t["timestamp"]) is int for t in trades)
    assert np.all(np.diff(ts) >= 0)
    assert ts[0] > start and ts[-1] <= end
    assert len({t["id"] for t in trades}) == len(trades)
    assert {t["side"] for t in trades} == {"buy", "sell"}
    assert all(t["amount"] > 0 for t in trades)
    assert np.all(prices > 0)
    assert {t["exchange"] for t in trades} == {"simulated"}
    assert {t["symbol"] for t in trades} == {BTC}
    # about trades_per_second * seconds trades
    assert 0.8 * 5 * 3600 < len(trades) < 1.2 * 5 * 3600
    # a walk, not noise: consecutive trades (also across minute blocks) are close in price
    assert np.max(np.abs(np.diff(np.log(prices)))) < 0.005
    # and it moves: an hour of 80 % annual volatility is not flat
    assert prices.max() / prices.min() > 1.0005


def test_price_stays_near_start_price_over_months():
    provider = frozen(symbols={"SOL/USDT": 150.0}, trades_per_second=0.02)
    day = 86_400_000
    samples = [provider.trades_between("SOL/USDT", NOW_MS + k * day, NOW_MS + k * day + 3_600_000)
               for k in range(0, 180, 9)]  # fmt: skip
    prices = [t["price"] for s in samples for t in s]
    assert prices and 150 / 3 < min(prices) and max(prices) < 150 * 3


# --------------------------------------------------------------------------------- candles


@pytest.mark.asyncio
async def test_fetch_candles_equals_aggregation_of_trades_between():
    provider = frozen()
    since = NOW_MS - 90 * MINUTE
    for timeframe, rule in (("1m", "1min"), ("5m", "5min"), ("15m", "15min")):
        candles = await provider.fetch_candles(BTC, timeframe, since)
        tf_ms = {"1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE}[timeframe]
        last_close = NOW_MS // tf_ms * tf_ms
        first_close = since // tf_ms * tf_ms + tf_ms
        assert candles[0]["timestamp"] == first_close
        assert candles[-1]["timestamp"] == last_close  # closed only: close <= now
        trades = provider.trades_between(BTC, first_close - tf_ms, last_close)
        agg = aggregate_arrays(
            np.array([t["timestamp"] for t in trades]),
            np.array([t["price"] for t in trades]),
            np.array([t["amount"] for t in trades]),
            timeframe,
        )
        assert [c["timestamp"] for c in candles] == agg["timestamp"].tolist()
        for field in ("open", "high", "low", "close", "volume"):
            assert [c[field] for c in candles] == agg[field].tolist()
        assert_candles_equal(candles, reference_candles(trades, rule))


@pytest.mark.asyncio
async def test_fetch_candles_pages_without_gaps_or_duplicates():
    provider = frozen()
    since = NOW_MS - 6 * 60 * MINUTE
    seen: list[dict] = []
    cursor = since
    for _ in range(20):
        page = await provider.fetch_candles(ETH, "1m", cursor, limit=97)
        if not page:
            break
        assert len(page) <= 97
        assert page[0]["timestamp"] > cursor
        seen.extend(page)
        cursor = page[-1]["timestamp"]
    closes = [c["timestamp"] for c in seen]
    first = since // MINUTE * MINUTE + MINUTE
    assert closes == list(range(first, NOW_MS // MINUTE * MINUTE + 1, MINUTE))
    one_go = await provider.fetch_candles(ETH, "1m", since, limit=1000)
    assert one_go == seen


@pytest.mark.asyncio
async def test_fetch_candles_only_closed_and_grow_with_the_clock():
    now = [NOW_S]
    provider = SimulatedProvider(seed=7, clock=lambda: now[0])
    before = await provider.fetch_candles(BTC, "5m", NOW_MS - 30 * MINUTE)
    assert before[-1]["timestamp"] <= NOW_MS < before[-1]["timestamp"] + 5 * MINUTE
    assert await provider.fetch_candles(BTC, "5m", before[-1]["timestamp"]) == []
    now[0] += 5 * 60
    after = await provider.fetch_candles(BTC, "5m", before[-1]["timestamp"])
    assert [c["timestamp"] for c in after] == [before[-1]["timestamp"] + 5 * MINUTE]
    # the new candle is the one a later backfill sees too: history does not change
    again = await provider.fetch_candles(BTC, "5m", NOW_MS - 30 * MINUTE)
    assert again[: len(before)] == before


@pytest.mark.asyncio
async def test_fetch_candles_history_is_bounded_and_hourly_is_consistent():
    provider = frozen(history_days=1)
    hourly = await provider.fetch_candles(BTC, "1h", 0)
    assert len(hourly) == 24
    assert hourly[0]["timestamp"] >= NOW_MS - 86_400_000
    minutes = await provider.fetch_candles(BTC, "1m", hourly[-2]["timestamp"], limit=60)
    last_hour = hourly[-1]
    assert minutes[0]["open"] == last_hour["open"]
    assert minutes[-1]["close"] == last_hour["close"]
    assert max(c["high"] for c in minutes) == last_hour["high"]
    assert min(c["low"] for c in minutes) == last_hour["low"]
    assert sum(c["volume"] for c in minutes) == pytest.approx(last_hour["volume"], rel=1e-9)


@pytest.mark.asyncio
async def test_fetch_three_days_of_minutes_is_quick():
    provider = frozen()
    started = time.perf_counter()
    cursor, total = NOW_MS - 3 * 86_400_000, 0
    while page := await provider.fetch_candles(BTC, "1m", cursor, limit=1000):
        total += len(page)
        cursor = page[-1]["timestamp"]
    assert total == 3 * 1440
    assert time.perf_counter() - started < 10


@pytest.mark.asyncio
async def test_unknown_symbol_and_timeframe_raise_provider_error():
    provider = frozen()
    with pytest.raises(ProviderError, match="DOGE/USDT"):
        await provider.fetch_candles("DOGE/USDT", "1m", NOW_MS - MINUTE)
    with pytest.raises(ProviderError, match="DOGE/USDT"):
        provider.trades_between("DOGE/USDT", NOW_MS - MINUTE, NOW_MS)
    with pytest.raises(ProviderError, match="DOGE/USDT"):
        async for _ in provider.stream_trades([BTC, "DOGE/USDT"]):
            pass
    with pytest.raises(ProviderError, match="7m"):
        await provider.fetch_candles(BTC, "7m", NOW_MS - MINUTE)
    with pytest.raises(ProviderError):
        SimulatedProvider(symbols={BTC: -1.0})


# --------------------------------------------------------------------------------- stream


async def collect(stream, until) -> list[dict]:
    out = []
    async for trade in stream:
        out.append(trade)
        if until(trade, out):
            break
    return out


def merged(provider: SimulatedProvider, symbols: list[str], start: int, end: int) -> list[dict]:
    """The stream's expected output: trades_between of each symbol, merged by (time, symbol)."""
    trades = [(t["timestamp"], i, t) for i, s in enumerate(symbols)
              for t in provider.trades_between(s, start, end)]  # fmt: skip
    return [t for _, _, t in sorted(trades, key=lambda x: (x[0], x[1]))]


@pytest.mark.asyncio
async def test_stream_sped_up_yields_requested_symbols_in_time_order():
    provider = SimulatedProvider(seed=11, speed=600)  # 10 simulated minutes per real second
    started = provider.now_ms()
    symbols = [ETH, BTC]
    trades = await asyncio.wait_for(
        collect(
            provider.stream_trades(symbols),
            lambda t, _: t["timestamp"] > started + 2 * MINUTE,
        ),
        timeout=20,
    )
    ts = [t["timestamp"] for t in trades]
    assert ts == sorted(ts)
    assert ts[0] > started  # from now on, not a replay of the past
    assert {t["symbol"] for t in trades} == set(symbols)
    assert trades[0]["timestamp"] - started < 10_000
    # exactly the deterministic trades (what backfill aggregates), from the stream's start on
    expected = merged(provider, symbols, started, trades[-1]["timestamp"])
    first = expected.index(trades[0])
    assert trades == expected[first : first + len(trades)]
    await provider.close()


@pytest.mark.asyncio
async def test_stream_never_runs_ahead_of_an_injected_clock():
    now = [NOW_S]
    provider = SimulatedProvider(seed=5, clock=lambda: now[0])
    got: list[dict] = []

    async def consume():
        async for trade in provider.stream_trades([BTC]):
            got.append(trade)

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.4)
        assert all(t["timestamp"] <= NOW_MS for t in got)
        assert got == []
        for step in range(1, 4):
            now[0] = NOW_S + 20 * step
            expected = provider.trades_between(BTC, NOW_MS, NOW_MS + 20_000 * step)
            deadline = time.monotonic() + 5
            while len(got) < len(expected) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert got == expected
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)


@pytest.mark.asyncio
async def test_stream_is_cancellable_and_close_ends_it():
    provider = SimulatedProvider(seed=5, speed=60)
    stream = provider.stream_trades([BTC])
    first = await asyncio.wait_for(anext(stream), timeout=10)
    assert first["symbol"] == BTC
    await provider.close()
    rest = await asyncio.wait_for(collect(stream, lambda *_: False), timeout=5)
    assert rest == []  # ended by close(), not by running on

    events: list[tuple[str, str]] = []
    provider = SimulatedProvider(seed=5, speed=1)  # real time: the next trade is ~0.2 s away
    provider.on_event = lambda event, detail: events.append((event, detail))
    task = asyncio.create_task(collect(provider.stream_trades([BTC]), lambda *_: False))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert events and events[0][0] == "connected"
