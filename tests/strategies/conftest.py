"""Helpers of the strategy tests: OHLCV frames from closes, random walks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from strategies.builtin import BUILTIN_STRATEGIES
from strategies.lookahead import random_walk_ohlcv

# Small parameter sets that keep the tests fast (and the EMA look-back within a few hundred bars).
SMALL_PARAMETERS: dict[str, list[dict]] = {
    "sma_crossover": [{"fast": 3, "slow": 8}, {"fast": 1, "slow": 5}],
    "ema_crossover": [{"fast": 3, "slow": 8}, {"fast": 2, "slow": 5}],
    "rsi_reversion": [{"period": 5}, {"period": 4, "oversold": 40.0, "overbought": 60.0}],
    "macd_crossover": [{"fast": 3, "slow": 6, "signal": 4}, {"fast": 2, "slow": 5, "signal": 2}],
    "bollinger_reversion": [{"n": 10, "k": 1.5}, {"n": 5, "k": 1.0}],
    "donchian_breakout": [{"n": 10}, {"n": 3}],
}
assert set(SMALL_PARAMETERS) == set(BUILTIN_STRATEGIES)

CASES = [
    pytest.param(name, params, id=f"{name}-{i}")
    for name, sets in SMALL_PARAMETERS.items()
    for i, params in enumerate(sets)
]


def frame_from_close(close: Sequence[float], start_ms: int = 1_700_006_400_000) -> pd.DataFrame:
    """Candles whose close is ``close``, opened at the previous close, 1 minute apart."""
    close = np.asarray(close, dtype=np.float64)
    open_ = np.concatenate([close[:1], close[:-1]])
    index = pd.to_datetime(start_ms + 60_000 * np.arange(1, close.size + 1), unit="ms", utc=True)
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close),
            "low": np.minimum(open_, close),
            "close": close,
            "volume": np.ones(close.size),
        },
        index=index,
    )


@pytest.fixture
def ohlcv() -> pd.DataFrame:
    """300 random-walk candles, volatile enough for every rule to fire several times."""
    return random_walk_ohlcv(300, seed=7, volatility=5e-3)
