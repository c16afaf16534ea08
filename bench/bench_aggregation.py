"""Candle aggregation: our numba kernels against pandas resample, and CandleBuilder throughput.

Numba is warmed up before any timing, so JIT compilation is excluded. Every figure is the best of
three runs (time.perf_counter), ours and the baseline alike; results are checked equal to the
baseline before they are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from marketdata.aggregation import (
    TIMEFRAMES,
    CandleBuilder,
    aggregate_all,
    aggregate_arrays,
    aggregate_to_timeframe,
    parse_timeframe,
)

PANDAS_RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "4h": "4h", "1d": "1D"}
# 2023-11-15 00:00 UTC; the data starts 3 h before, so the first day candle is a partial one.
START_MS = 19_676 * 86_400_000 - 3 * 3_600_000
REPEAT = 3


def make_ticks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n synthetic trades: 10-50 ms apart with 20% duplicate timestamps, random-walk prices."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(10, 51, n)
    steps[rng.random(n) < 0.2] = 0
    ts = START_MS + np.cumsum(steps, dtype=np.int64)
    price = np.round(30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-4, n))), 2)
    volume = rng.exponential(0.05, n)
    return ts, price, volume


def best_of(fn: Callable[[], object], repeat: int = REPEAT) -> tuple[float, object]:
    """(best wall time in seconds, result of the last run)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def pandas_frame(ts: np.ndarray, price: np.ndarray, volume: np.ndarray) -> pd.DataFrame:
    index = pd.to_datetime(ts, unit="ms", utc=True)
    return pd.DataFrame({"price": price, "volume": volume}, index=index)


def pandas_resample(frame: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """The natural pandas way: one right-closed, right-labelled resample of the ticks."""
    # Day bins on a tz-aware index start at UTC midnight; pandas ignores (and warns about) origin.
    origin = {} if timeframe == "1d" else {"origin": "epoch"}
    resampled = frame.resample(PANDAS_RULES[timeframe], closed="right", label="right", **origin)
    candles = resampled["price"].ohlc()
    candles["volume"] = resampled["volume"].sum()
    candles["trades"] = resampled["price"].count()
    return candles[candles["trades"] > 0]


def check_equal(ours: dict[str, np.ndarray], theirs: pd.DataFrame, label: str) -> None:
    """Timestamps, OHLC and counts exactly equal, volume within 1e-9 relative; else raise."""
    expected = {
        "timestamp": theirs.index.as_unit("ms").asi8,
        **{name: theirs[name].to_numpy() for name in ("open", "high", "low", "close", "volume")},
        "trades": theirs["trades"].to_numpy(),
    }
    for name in ("timestamp", "open", "high", "low", "close", "trades"):
        if not np.array_equal(ours[name], expected[name]):
            raise AssertionError(f"{label}: {name} differs from pandas")
    if not np.allclose(ours["volume"], expected["volume"], rtol=1e-9, atol=0.0):
        raise AssertionError(f"{label}: volume differs from pandas beyond 1e-9 relative")


def candle_rows(candles: dict[str, np.ndarray]) -> list[dict]:
    """Array candles as the list of dicts the streaming forms return."""
    columns = [values.tolist() for values in candles.values()]
    return [dict(zip(candles, row, strict=True)) for row in zip(*columns, strict=True)]


def plain_python_fold(
    ts: list[int], price: list[float], volume: list[float], interval_ms: int
) -> list[dict]:
    """The obvious hand-written loop over dict candles: the baseline for CandleBuilder.add."""
    candles: list[dict] = []
    current: dict | None = None
    for t, p, v in zip(ts, price, volume, strict=True):
        close_ms = -(-t // interval_ms) * interval_ms
        if current is not None and current["timestamp"] == close_ms:
            current["high"] = max(current["high"], p)
            current["low"] = min(current["low"], p)
            current["close"] = p
            current["volume"] += v
            current["trades"] += 1
            continue
        if current is not None:
            candles.append(current)
        current = {
            "timestamp": close_ms,
            "open": p,
            "high": p,
            "low": p,
            "close": p,
            "volume": v,
            "trades": 1,
        }
    if current is not None:
        candles.append(current)
    return candles


def warm_up() -> None:
    ts, price, volume = make_ticks(5_000, seed=1)
    aggregate_all(ts, price, volume)
    builder = CandleBuilder("1m")
    builder.add_many(ts, price, volume)
    builder.flush(int(ts[-1]) + 86_400_000)


def bench_aggregate(n: int) -> list[dict]:
    ts, price, volume = make_ticks(n)
    days = (ts[-1] - ts[0]) / 86_400_000
    frame = pandas_frame(ts, price, volume)

    ours_s, ours = best_of(lambda: aggregate_all(ts, price, volume))
    theirs_s, theirs = best_of(lambda: {tf: pandas_resample(frame, tf) for tf in TIMEFRAMES})
    for tf in TIMEFRAMES:
        check_equal(ours[tf], theirs[tf], f"aggregate_all {tf}")

    one_s, one = best_of(lambda: aggregate_arrays(ts, price, volume, "1m"))
    theirs_one_s, theirs_one = best_of(lambda: pandas_resample(frame, "1m"))
    check_equal(one, theirs_one, "aggregate_arrays 1m")

    counts = ", ".join(f"{tf}:{ours[tf]['timestamp'].size}" for tf in TIMEFRAMES)
    print(f"   {n:,} ticks over {days:.1f} days -> candles {counts}", flush=True)
    note = (
        f"{n / ours_s / 1e6:.0f}M ticks/s; JIT excluded; equal to pandas (OHLC/ts/counts exact,"
        " volume 1e-9); pandas gets a prebuilt DataFrame"
    )
    return [
        {
            "benchmark": f"aggregate_all {n:,} ticks -> 6 timeframes",
            "ours_s": ours_s,
            "baseline": "pandas resample per timeframe",
            "baseline_s": theirs_s,
            "ratio": theirs_s / ours_s,
            "note": note,
        },
        {
            "benchmark": f"aggregate_arrays {n:,} ticks -> 1m",
            "ours_s": one_s,
            "baseline": "pandas resample 1min",
            "baseline_s": theirs_one_s,
            "ratio": theirs_one_s / one_s,
            "note": f"{n / one_s / 1e6:.0f}M ticks/s; equal to pandas",
        },
    ]


def bench_builder(n_batch: int, n_single: int, batch: int = 10_000) -> list[dict]:
    timeframe = "1m"
    interval_ms = parse_timeframe(timeframe) * 1_000
    ts, price, volume = make_ticks(n_batch, seed=2)

    def batched() -> list[dict]:
        builder = CandleBuilder(timeframe)
        closed: list[dict] = []
        for lo in range(0, n_batch, batch):
            hi = lo + batch
            closed += builder.add_many(ts[lo:hi], price[lo:hi], volume[lo:hi])
        return closed + builder.flush(builder.current["timestamp"])

    many_s, many = best_of(batched)
    expected = aggregate_arrays(ts, price, volume, timeframe)
    if many != candle_rows(expected):
        raise AssertionError("add_many candles differ from aggregate_arrays")
    many_rate = n_batch / many_s

    ts_list = ts[:n_single].tolist()
    price_list = price[:n_single].tolist()
    volume_list = volume[:n_single].tolist()

    def one_by_one() -> list[dict]:
        builder = CandleBuilder(timeframe)
        add = builder.add
        closed: list[dict] = []
        for t, p, v in zip(ts_list, price_list, volume_list, strict=True):
            out = add(t, p, v)
            if out:
                closed += out
        return closed + builder.flush(builder.current["timestamp"])

    add_s, added = best_of(one_by_one)
    plain_s, plain = best_of(
        lambda: plain_python_fold(ts_list, price_list, volume_list, interval_ms)
    )
    if added != plain:
        raise AssertionError("CandleBuilder.add candles differ from the plain-Python loop")
    add_rate = n_single / add_s

    ticks = [
        {"timestamp": t, "price": p, "volume": v}
        for t, p, v in zip(ts_list, price_list, volume_list, strict=True)
    ]
    stream_s, streamed = best_of(lambda: list(aggregate_to_timeframe(ticks, timeframe)))
    if streamed != plain:
        raise AssertionError("aggregate_to_timeframe candles differ from the plain-Python loop")

    target_s = n_batch / 1e6
    return [
        {
            "benchmark": f"CandleBuilder.add_many {n_batch:,} ticks, batches of {batch:,}",
            "ours_s": many_s,
            "baseline": "target 1M ticks/s",
            "baseline_s": target_s,
            "ratio": target_s / many_s,
            "note": f"{many_rate:,.0f} ticks/s (target >= 1,000,000: "
            f"{'met' if many_rate >= 1e6 else 'NOT met'})",
        },
        {
            "benchmark": f"CandleBuilder.add {n_single:,} ticks, one call each",
            "ours_s": add_s,
            "baseline": "plain-Python dict loop",
            "baseline_s": plain_s,
            "ratio": plain_s / add_s,
            "note": f"{add_rate:,.0f} ticks/s ({'above' if add_rate >= 1e6 else 'below'} 1M/s)",
        },
        {
            "benchmark": f"aggregate_to_timeframe {n_single:,} tick dicts",
            "ours_s": stream_s,
            "baseline": "plain-Python dict loop",
            "baseline_s": plain_s,
            "ratio": plain_s / stream_s,
            "note": f"{n_single / stream_s:,.0f} ticks/s (reads dicts, checks order)",
        },
    ]


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows: 10M ticks (1M with quick) for the array paths, 1M (100k) one by one."""
    n_ticks = 1_000_000 if quick else 10_000_000
    n_single = 100_000 if quick else 1_000_000
    warm_up()
    rows = bench_aggregate(n_ticks)
    rows += bench_builder(n_ticks, n_single)
    for row in rows:
        print(f"   {row['benchmark']}: {row['ours_s']:.4f} s, {row['note']}", flush=True)
    return rows
