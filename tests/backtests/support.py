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
