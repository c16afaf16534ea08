"""Helpers of the backtest tests: hand-made OHLC frames and a strategy that replays a script.

A module of its own (not conftest) so that joblib workers can unpickle ``Scripted`` by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from strategies.base import BaseStrategy

START_MS = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a candle close time


class Scripted(BaseStrategy):
    """Replays signals written into the data: ``volume - 2`` is the signal of each bar (volume
    1 = sell, 2 = hold, 3 = buy). No warm-up; bar i's signal reads bar i only."""

    name = "scripted_test"

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return 0

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        return (ohlcv["volume"].to_numpy() - 2.0).astype(np.int8)


def frame(
    open_: Sequence[float],
    high: Sequence[float],
    low: Sequence[float],
    close: Sequence[float],
    signals: Sequence[int] | None = None,
    *,
    interval_ms: int = 60_000,
) -> pd.DataFrame:
    """An OHLCV frame with 1-minute close times; ``signals`` are encoded for ``Scripted``."""
    n = len(close)
    signals = [0] * n if signals is None else list(signals)
    index = pd.to_datetime(START_MS + interval_ms * np.arange(1, n + 1), unit="ms", utc=True)
    return pd.DataFrame(
        {
            "open": np.asarray(open_, dtype=np.float64),
            "high": np.asarray(high, dtype=np.float64),
            "low": np.asarray(low, dtype=np.float64),
            "close": np.asarray(close, dtype=np.float64),
            "volume": np.asarray(signals, dtype=np.float64) + 2.0,
        },
        index=index,
    )


def flat_bars(prices: Sequence[float], signals: Sequence[int] | None = None) -> pd.DataFrame:
    """Bars that trade at one price each (open = high = low = close)."""
    return frame(prices, prices, prices, prices, signals)


def store_hourly_candles(instrument_id: int, *, start_ms: int, bars: int, seed: int) -> None:
    """Store ``bars`` 1h candles of a seeded random walk (4-decimal prices) after ``start_ms``."""
    from marketdata.services import candles_upsert

    hour = 3_600_000
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars))), 4)
    open_ = np.round(np.r_[close[0], close[:-1]], 4)
    spread = np.abs(rng.normal(0, 0.005, bars)) * close
    candles_upsert(
        instrument_id=instrument_id, timeframe="1h",
        candles={
            "timestamp": start_ms + hour * np.arange(1, bars + 1),
            "open": open_, "close": close,
            "high": np.round(np.maximum(open_, close) + spread, 4),
            "low": np.round(np.minimum(open_, close) - spread, 4),
            "volume": np.round(rng.uniform(1, 10, bars), 3), "trades": np.full(bars, 5),
        },
    )  # fmt: skip
