"""An "outside" strategy module, written as a user would (plain pandas/numpy, no numba).

The tests list it in ``TRADEAPP_STRATEGY_MODULES``. ``PeekAhead`` cheats on purpose: it buys when
the NEXT close is higher (``close.shift(-1)``), which the lookahead check must catch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from strategies.base import BaseStrategy, Parameter
from strategies.builtin import SMACrossover  # imported, not defined here: must not be collected


class CloseAboveSMA(BaseStrategy):
    """Buy when the close rises above its SMA, sell when it falls below it.

    Parameters: ``n``, the SMA length. Warm-up: ``n`` candles.
    """

    name = "close_above_sma"
    parameter_specs = (
        Parameter("n", int, default=5, minimum=2, maximum=500, step=10, help="SMA length"),
    )
    plots = {"sma": {"pane": "price", "color": "#ff7f0e"}}

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return parameters["n"]

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict) -> dict:
        return {"sma": ohlcv["close"].rolling(parameters["n"]).mean().to_numpy()}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        close = ohlcv["close"]
        above = (close > close.rolling(parameters["n"]).mean()).astype(int)
        return above.diff().fillna(0).to_numpy()  # float +1/-1/0: the base converts it


class PeekAhead(BaseStrategy):
    """Cheats: buys before a rise and sells before a fall by reading the next close."""

    name = "peek_ahead"
    parameter_specs = ()

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return 0

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        close = ohlcv["close"]
        upcoming = close.shift(-1)
        return np.where(upcoming > close, 1, np.where(upcoming < close, -1, 0))


class _HelperWithoutName(BaseStrategy):
    """A concrete helper without a name: not registered."""

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return 0

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        return np.zeros(len(ohlcv), dtype=np.int8)


__all__ = ["CloseAboveSMA", "PeekAhead", "SMACrossover"]
