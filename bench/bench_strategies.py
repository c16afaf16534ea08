"""Signal generation of every built-in strategy: ours (numba kernels) against pandas.

Ours is the public path a backtest takes, ``Strategy.generate_signals(frame, parameters)``,
input validation (of the columns the strategy reads) and warm-up masking included. The baseline
is the same rule written the natural pandas way (rolling/ewm/shift on Series) from the same
DataFrame. EMAs in the baseline are seeded exactly like ours (the SMA of the first ``n``
values, then ``ewm(adjust=False)``), and Wilder's RSI likewise, so the two must produce
identical signals: every row checks that before it is reported, and the note gives the number
of buys and sells. Numba is warmed up before any timing (JIT compilation excluded); every
figure is the best of five runs (time.perf_counter).

Two "part" rows show sma_crossover without its input validation: the fused kernel alone, and the
same rule composed from the indicator kernels (two SMA arrays and the crossover kernel), each
against pandas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from strategies import indicators
from strategies.base import validate_ohlcv
from strategies.builtin import BUILTIN_STRATEGIES
from strategies.kernels import cross_signals_nb, sma_cross_signals_nb
from strategies.lookahead import random_walk_ohlcv

REPEAT = 5


def best_of(fn: Callable[[], object], repeat: int = REPEAT) -> tuple[float, object]:
    """(best wall time in seconds, result of the last run)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# -- the pandas baseline -------------------------------------------------------------------------


def seeded_ewm(x: pd.Series, n: int, alpha: float) -> pd.Series:
    """``ewm(alpha, adjust=False)`` started, like ours, at the mean of the first ``n`` valid
    values (placed on the n-th of them); NaN before."""
    first = int(x.notna().to_numpy().argmax())
    start = first + n - 1
    seeded = x.copy()
    seeded.iloc[:start] = np.nan
    if start < len(x):
        seeded.iloc[start] = x.iloc[first : start + 1].mean()
    return seeded.ewm(alpha=alpha, adjust=False).mean()


def pandas_ema(x: pd.Series, n: int) -> pd.Series:
    return seeded_ewm(x, n, 2.0 / (n + 1))


def pandas_cross(fast: pd.Series, slow: pd.Series) -> np.ndarray:
    prev_fast, prev_slow = fast.shift(1), slow.shift(1)
    buy = (prev_fast < prev_slow) & (fast > slow)
    sell = (prev_fast > prev_slow) & (fast < slow)
    return (buy.astype(np.int8) - sell.astype(np.int8)).to_numpy()


def pandas_sma_crossover(df: pd.DataFrame, p: dict) -> np.ndarray:
    close = df["close"]
    return pandas_cross(close.rolling(p["fast"]).mean(), close.rolling(p["slow"]).mean())


def pandas_ema_crossover(df: pd.DataFrame, p: dict) -> np.ndarray:
    close = df["close"]
    return pandas_cross(pandas_ema(close, p["fast"]), pandas_ema(close, p["slow"]))


def pandas_macd_crossover(df: pd.DataFrame, p: dict) -> np.ndarray:
    close = df["close"]
    line = pandas_ema(close, p["fast"]) - pandas_ema(close, p["slow"])
    return pandas_cross(line, pandas_ema(line, p["signal"]))


def pandas_rsi_reversion(df: pd.DataFrame, p: dict) -> np.ndarray:
    n = p["period"]
    change = df["close"].diff()
    gain = seeded_ewm(change.clip(lower=0.0), n, 1.0 / n)
    loss = seeded_ewm((-change).clip(lower=0.0), n, 1.0 / n)
    total = gain + loss
    rsi = (100.0 * gain / total).mask(total == 0.0, 50.0)
    prev = rsi.shift(1)
    buy = (prev <= p["oversold"]) & (rsi > p["oversold"])
    sell = (prev >= p["overbought"]) & (rsi < p["overbought"])
    return (buy.astype(np.int8) - sell.astype(np.int8)).to_numpy()


def pandas_bollinger_reversion(df: pd.DataFrame, p: dict) -> np.ndarray:
    close = df["close"]
    rolling = close.rolling(p["n"])
    middle, width = rolling.mean(), p["k"] * rolling.std(ddof=0)
    upper, lower = middle + width, middle - width
    prev = close.shift(1)
    buy = (prev <= lower.shift(1)) & (close > lower)
    sell = (prev >= upper.shift(1)) & (close < upper)
    return (buy.astype(np.int8) - sell.astype(np.int8)).to_numpy()


def pandas_donchian_breakout(df: pd.DataFrame, p: dict) -> np.ndarray:
    close = df["close"]
    upper = df["high"].rolling(p["n"]).max()
    lower = df["low"].rolling(p["n"]).min()
    buy = close > upper.shift(1)
    sell = close < lower.shift(1)
    return (buy.astype(np.int8) - sell.astype(np.int8)).to_numpy()


PANDAS: dict[str, Callable[[pd.DataFrame, dict], np.ndarray]] = {
    "sma_crossover": pandas_sma_crossover,
    "ema_crossover": pandas_ema_crossover,
    "rsi_reversion": pandas_rsi_reversion,
    "macd_crossover": pandas_macd_crossover,
    "bollinger_reversion": pandas_bollinger_reversion,
    "donchian_breakout": pandas_donchian_breakout,
}


# -- the benchmark ------------------------------------------------------------------------------


def warm_up() -> None:
    data = random_walk_ohlcv(5_000, seed=1)
    for cls in BUILTIN_STRATEGIES.values():
        cls.generate_signals(data)
        cls(None).process_data(data.iloc[-600:])


def bench_strategy(name: str, data: pd.DataFrame) -> dict:
    cls = BUILTIN_STRATEGIES[name]
    params = cls.default_parameters()
    baseline = PANDAS[name]
    validate_s, _ = best_of(lambda: validate_ohlcv(data, cls.columns))
    ours_s, ours = best_of(lambda: cls.generate_signals(data, params))
    theirs_s, theirs = best_of(lambda: baseline(data, params))
    mismatches = np.flatnonzero(ours != theirs)
    if mismatches.size:
        raise AssertionError(
            f"{name}: {mismatches.size} signals differ from pandas, first at bar {mismatches[0]}"
        )
    n = len(data)
    return {
        "benchmark": f"{name} {params} generate_signals, {n:,} bars",
        "ours_s": ours_s,
        "baseline": "same rule in pandas rolling/ewm",
        "baseline_s": theirs_s,
        "ratio": theirs_s / ours_s,
        "note": f"{n / ours_s / 1e6:.0f}M bars/s; equal to pandas "
        f"({int((ours == 1).sum()):,} buys, {int((ours == -1).sum()):,} sells); input "
        f"validation {validate_s * 1e3:.1f} ms of it; JIT excluded",
    }


def bench_parts(data: pd.DataFrame) -> list[dict]:
    """Where sma_crossover's time goes: its fused kernel alone, and the same rule composed from
    the indicator kernels (two SMA arrays, then the crossover kernel), each against pandas."""
    close = data["close"]
    values = np.ascontiguousarray(close.to_numpy())
    fused_s, fused = best_of(lambda: sma_cross_signals_nb(values, 10, 30))
    composed_s, composed = best_of(
        lambda: cross_signals_nb(indicators.sma(values, 10), indicators.sma(values, 30))
    )
    pd_s, theirs = best_of(lambda: pandas_sma_crossover(data, {"fast": 10, "slow": 30}))
    composed[:30] = 0
    if not (np.array_equal(fused, composed) and np.array_equal(fused, theirs)):
        raise AssertionError("fused, composed and pandas SMA crossovers differ")
    n = len(data)
    return [
        {
            "benchmark": f"part: sma_cross_signals_nb alone, {n:,} bars",
            "ours_s": fused_s,
            "baseline": "pandas rolling(10/30).mean() + crossover",
            "baseline_s": pd_s,
            "ratio": pd_s / fused_s,
            "note": "the fused kernel without input validation (strategies/kernels.py)",
        },
        {
            "benchmark": f"part: sma(10), sma(30), cross_signals_nb, {n:,} bars",
            "ours_s": composed_s,
            "baseline": "pandas rolling(10/30).mean() + crossover",
            "baseline_s": pd_s,
            "ratio": pd_s / composed_s,
            "note": "the same rule composed from the indicator kernels (what the fused kernel "
            "replaces; equal signals)",
        },
    ]


def bench_process_data(data: pd.DataFrame, calls: int) -> dict:
    """A bot's cost per closed candle: process_data on a window of lookback() candles."""
    cls = BUILTIN_STRATEGIES["macd_crossover"]
    strategy = cls(None)
    length = cls.lookback(strategy.parameters)
    windows = [data.iloc[i - length : i] for i in range(length, length + calls)]
    ours_s, _ = best_of(lambda: [strategy.process_data(w) for w in windows])
    theirs_s, _ = best_of(
        lambda: [PANDAS["macd_crossover"](w, strategy.parameters) for w in windows]
    )
    return {
        "benchmark": f"macd_crossover process_data x{calls:,}, {length}-candle windows",
        "ours_s": ours_s,
        "baseline": "pandas signals only, same windows",
        "baseline_s": theirs_s,
        "ratio": theirs_s / ours_s,
        "note": f"{ours_s / calls * 1e6:.0f} us per candle incl. Signal, reason and indicators",
    }


def run(quick: bool = False) -> list[dict]:
    """One row per built-in on 1M random-walk bars (100k with quick), plus a bot-path row."""
    n = 100_000 if quick else 1_000_000
    warm_up()
    data = random_walk_ohlcv(n, seed=0)
    rows = [bench_strategy(name, data) for name in BUILTIN_STRATEGIES]
    rows += bench_parts(data)
    rows.append(bench_process_data(data, 200 if quick else 1_000))
    for row in rows:
        print(f"   {row['benchmark']}: {row['ours_s']:.4f} s, {row['note']}", flush=True)
    return rows
