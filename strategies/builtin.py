"""The built-in strategies. Pure (numpy, pandas, numba; never Django).

Each rule is the signal kernel of ``strategies.kernels`` applied to indicators of
``strategies.indicators`` (what ``compute_indicators`` returns, plotted and logged with every
decision); ``generate_signals`` runs it as one fused kernel from prices to signals, which the
tests hold equal to that composition.

Every rule below is written for a trader: what makes a BUY, what makes a SELL, the parameters
and the warm-up. "Bar" and "candle" are the same thing; a signal on a candle is known when that
candle closes. All of them only compare the current candle with the previous one, so none looks
ahead; ``strategies.lookahead`` and the tests check it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from strategies.base import (
    Action,
    BaseStrategy,
    Decision,
    OHLCVArrays,
    Parameter,
    StrategyParameterError,
    ema_settle_bars,
    fmt,
)
from strategies.indicators import bollinger, donchian, ema, macd, rsi, sma
from strategies.kernels import (
    bollinger_reentry_signals_nb,
    donchian_breakout_signals_nb,
    ema_cross_signals_nb,
    macd_cross_signals_nb,
    rsi_reentry_signals_nb,
    sma_cross_many_from_prefix,
    sma_cross_signals_nb,
    sma_prefix,
)

__all__ = [
    "BUILTIN_STRATEGIES",
    "BollingerReversion",
    "DonchianBreakout",
    "EMACrossover",
    "MACDCrossover",
    "RSIReversion",
    "SMACrossover",
]


def _column(ohlcv: pd.DataFrame, name: str) -> np.ndarray:
    return np.ascontiguousarray(ohlcv[name].to_numpy(dtype=np.float64))


def _close(ohlcv: pd.DataFrame) -> np.ndarray:
    return _column(ohlcv, "close")


def _out(close: np.ndarray) -> np.ndarray:
    """The signals array, allocated by numpy (it reuses freed memory: no page faults)."""
    return np.empty(close.shape[0], dtype=np.int8)


class _Columns:
    """A frame's columns as float64 arrays, read on first use (``signals_from_arrays`` takes
    ``OHLCVArrays`` or this)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def __getattr__(self, name: str) -> np.ndarray:
        values = _column(self._frame, name)
        setattr(self, name, values)
        return values


def _require_less(parameters: dict[str, Any], small: str, large: str) -> None:
    if not parameters[small] < parameters[large]:
        raise StrategyParameterError(
            small,
            f"{small} ({fmt(parameters[small])}) must be less than {large} "
            f"({fmt(parameters[large])})",
        )


def _cross_reason(decision: Decision, fast_key: str, slow_key: str, fast: str, slow: str) -> str:
    """The decision log sentence of a crossover rule (SMA, EMA and MACD crossovers)."""
    f, s = decision.now[fast_key], decision.now[slow_key]
    pf, ps = decision.prev[fast_key], decision.prev[slow_key]
    if decision.action is Action.BUY:
        return (
            f"{fast} crossed above {slow}: {fmt(pf)} < {fmt(ps)} on the previous candle, "
            f"{fmt(f)} > {fmt(s)} now"
        )
    if decision.action is Action.SELL:
        return (
            f"{fast} crossed below {slow}: {fmt(pf)} > {fmt(ps)} on the previous candle, "
            f"{fmt(f)} < {fmt(s)} now"
        )
    if f == s:
        return (
            f"no crossover: {fast} equals {slow} ({fmt(f)}); a cross needs {fast} strictly "
            "below then strictly above (or the reverse) on two consecutive candles"
        )
    side = "above" if f > s else "below"
    if pf == ps:
        return (
            f"no crossover: {fast} ({fmt(f)}) moved {side} {slow} ({fmt(s)}) from equal on the "
            "previous candle; equality is not a side, so this is not a cross"
        )
    return f"no crossover: {fast} ({fmt(f)}) stays {side} {slow} ({fmt(s)})"


class SMACrossover(BaseStrategy):
    """Simple moving average crossover (trend following).

    BUY on a candle when the fast SMA was below the slow SMA on the previous candle and is above
    it on this one; SELL on the mirror image (fast was above, is now below). "Below" and "above"
    are strict: a candle on which the two averages are exactly equal is on neither side, so a
    touch is not a cross, and neither is a move that rests exactly on equality for a candle on
    its way through.

    Parameters: ``fast`` and ``slow``, the SMA lengths in candles (``fast < slow``).
    Warm-up: ``slow`` candles (the slow SMA needs ``slow`` closes, and the rule compares two
    consecutive candles), so the first possible signal is on candle ``slow + 1``.
    """

    name = "sma_crossover"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    finite_check_in_kernel = True  # the kernel refuses NaN while it reads the closes
    title = "SMA crossover"
    columns = ("close",)
    parameter_specs = (
        Parameter("fast", int, 10, minimum=1, maximum=500, step=5,
                  help="Fast SMA length, in candles; must be less than slow."),
        Parameter("slow", int, 30, minimum=2, maximum=1000, step=10,
                  help="Slow SMA length, in candles."),
    )  # fmt: skip
    plots = {
        "fast_sma": {"pane": "price", "color": "#1f77b4"},
        "slow_sma": {"pane": "price", "color": "#ff7f0e"},
    }

    @classmethod
    def validate_parameters(cls, parameters: dict[str, Any]) -> None:
        _require_less(parameters, "fast", "slow")

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["slow"]

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        close = _close(ohlcv)
        return {
            "fast_sma": sma(close, parameters["fast"]),
            "slow_sma": sma(close, parameters["slow"]),
        }

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return sma_cross_signals_nb(
            arrays.close, parameters["fast"], parameters["slow"], _out(arrays.close)
        )

    @classmethod
    def signals_for_sweep(
        cls, arrays: OHLCVArrays, parameter_sets: list[dict[str, Any]]
    ) -> Callable[[list[dict[str, Any]]], np.ndarray]:
        """The signals of a batch of ``parameter_sets`` (one row each, as
        ``signals_from_arrays`` gives them, bit for bit), with the work they share done once:
        the exact prefix sums of the closes (``sma_prefix``); per set only its two means and
        their comparison remain, all the batch's in one call."""
        close = arrays.close
        history = max((max(p["fast"], p["slow"]) for p in parameter_sets), default=1)
        prefix = sma_prefix(close, history)

        def signals(batch: list[dict[str, Any]]) -> np.ndarray:
            pairs = [(p["fast"], p["slow"]) for p in batch]
            return sma_cross_many_from_prefix(close, prefix, pairs)

        return signals

    @classmethod
    def explain(cls, decision: Decision) -> str:
        p = decision.parameters
        return _cross_reason(
            decision, "fast_sma", "slow_sma", f"SMA({p['fast']})", f"SMA({p['slow']})"
        )


class EMACrossover(BaseStrategy):
    """Exponential moving average crossover (trend following, quicker than SMAs).

    BUY on a candle when the fast EMA was below the slow EMA on the previous candle and is above
    it on this one; SELL on the mirror image. Equality is on neither side (as for the SMA
    crossover). Each EMA starts as the SMA of its first ``n`` closes, then follows
    ``ema = ema + 2 / (n + 1) * (close - ema)``.

    Parameters: ``fast`` and ``slow``, the EMA lengths in candles (``fast < slow``).
    Warm-up: ``slow`` candles, as for the SMA crossover. An EMA remembers every candle (fading
    away): a bot should give it ``lookback`` candles (warm-up plus the bars the start value takes
    to fade below float precision) to decide exactly as the backtest over the full history.
    """

    name = "ema_crossover"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    title = "EMA crossover"
    columns = ("close",)
    parameter_specs = (
        Parameter("fast", int, 12, minimum=1, maximum=500, step=5,
                  help="Fast EMA length, in candles; must be less than slow."),
        Parameter("slow", int, 26, minimum=2, maximum=1000, step=10,
                  help="Slow EMA length, in candles."),
    )  # fmt: skip
    plots = {
        "fast_ema": {"pane": "price", "color": "#1f77b4"},
        "slow_ema": {"pane": "price", "color": "#ff7f0e"},
    }

    @classmethod
    def validate_parameters(cls, parameters: dict[str, Any]) -> None:
        _require_less(parameters, "fast", "slow")

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["slow"]

    @classmethod
    def lookback(cls, parameters: dict[str, Any]) -> int:
        return cls.warmup(parameters) + 1 + ema_settle_bars(2.0 / (parameters["slow"] + 1))

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        close = _close(ohlcv)
        return {
            "fast_ema": ema(close, parameters["fast"]),
            "slow_ema": ema(close, parameters["slow"]),
        }

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return ema_cross_signals_nb(
            arrays.close, parameters["fast"], parameters["slow"], _out(arrays.close)
        )

    @classmethod
    def explain(cls, decision: Decision) -> str:
        p = decision.parameters
        return _cross_reason(
            decision, "fast_ema", "slow_ema", f"EMA({p['fast']})", f"EMA({p['slow']})"
        )


class RSIReversion(BaseStrategy):
    """RSI mean reversion: buy when the RSI leaves the oversold zone, sell when it leaves the
    overbought zone.

    The oversold zone is RSI <= ``oversold``, the overbought zone RSI >= ``overbought`` (the
    levels belong to their zones). BUY on a candle when the RSI was in the oversold zone on the
    previous candle and is above ``oversold`` on this one (it crossed up through the level).
    SELL when the RSI was in the overbought zone on the previous candle and is below
    ``overbought`` on this one (it crossed down through the level). Staying in a zone, or
    touching a level from outside, does nothing. The RSI is Wilder's: average gain and loss of
    the last ``period`` closes, smoothed with ``avg = (avg * (period - 1) + x) / period``.

    Parameters: ``period`` (candles), ``oversold`` and ``overbought`` (RSI levels, 0-100,
    ``oversold < overbought``).
    Warm-up: ``period + 1`` candles (the first RSI needs ``period`` price changes, i.e.
    ``period + 1`` closes, and the rule compares two consecutive RSI values).
    """

    name = "rsi_reversion"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    title = "RSI reversion"
    columns = ("close",)
    parameter_specs = (
        Parameter("period", int, 14, minimum=2, maximum=200, step=2,
                  help="RSI length, in candles (Wilder smoothing)."),
        Parameter("oversold", float, 30.0, minimum=1.0, maximum=50.0, step=5.0,
                  help="Buy when the RSI rises above this level from at or below it."),
        Parameter("overbought", float, 70.0, minimum=50.0, maximum=99.0, step=5.0,
                  help="Sell when the RSI falls below this level from at or above it."),
    )  # fmt: skip
    plots = {"rsi": {"pane": "own", "color": "#9467bd", "group": "rsi"}}

    @classmethod
    def validate_parameters(cls, parameters: dict[str, Any]) -> None:
        _require_less(parameters, "oversold", "overbought")

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["period"] + 1

    @classmethod
    def lookback(cls, parameters: dict[str, Any]) -> int:
        return cls.warmup(parameters) + 1 + ema_settle_bars(1.0 / parameters["period"])

    @classmethod
    def plot_spec(cls, parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
        spec = super().plot_spec(parameters)
        spec["rsi"]["levels"] = [parameters["oversold"], parameters["overbought"]]
        return spec

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        return {"rsi": rsi(_close(ohlcv), parameters["period"])}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return rsi_reentry_signals_nb(
            arrays.close,
            parameters["period"],
            parameters["oversold"],
            parameters["overbought"],
            _out(arrays.close),
        )

    @classmethod
    def explain(cls, decision: Decision) -> str:
        p = decision.parameters
        low, high = p["oversold"], p["overbought"]
        now, prev = decision.now["rsi"], decision.prev["rsi"]
        label = f"RSI({p['period']})"
        if decision.action is Action.BUY:
            return (
                f"{label} rose out of oversold: {fmt(prev)} <= {fmt(low)} on the previous "
                f"candle, {fmt(now)} > {fmt(low)} now"
            )
        if decision.action is Action.SELL:
            return (
                f"{label} fell out of overbought: {fmt(prev)} >= {fmt(high)} on the previous "
                f"candle, {fmt(now)} < {fmt(high)} now"
            )
        if now <= low:
            return f"{label} is {fmt(now)}, oversold (<= {fmt(low)}): waiting for it to rise above"
        if now >= high:
            return (
                f"{label} is {fmt(now)}, overbought (>= {fmt(high)}): waiting for it to fall below"
            )
        return f"{label} is {fmt(now)}, between {fmt(low)} and {fmt(high)}: no zone was left"


class MACDCrossover(BaseStrategy):
    """MACD signal-line crossover (momentum).

    The MACD line is EMA(``fast``) - EMA(``slow``) of the close; the signal line is the EMA
    (``signal``) of the MACD line, started as the mean of its first ``signal`` values. BUY on a
    candle when the MACD line was below the signal line on the previous candle and is above it
    on this one; SELL on the mirror image. Equality is on neither side, as for the moving average
    crossovers. The histogram (line - signal) is plotted but not used by the rule.

    Parameters: ``fast``, ``slow`` (``fast < slow``) and ``signal``, EMA lengths in candles.
    Warm-up: ``slow + signal - 1`` candles (the signal line starts on candle ``slow + signal -
    1``, and the rule compares two consecutive candles). Like every EMA rule it remembers the
    whole history: see ``lookback``.
    """

    name = "macd_crossover"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    title = "MACD crossover"
    columns = ("close",)
    parameter_specs = (
        Parameter("fast", int, 12, minimum=1, maximum=200, step=2,
                  help="Fast EMA length, in candles; must be less than slow."),
        Parameter("slow", int, 26, minimum=2, maximum=500, step=5,
                  help="Slow EMA length, in candles."),
        Parameter("signal", int, 9, minimum=1, maximum=100, step=1,
                  help="Signal line EMA length, in candles."),
    )  # fmt: skip
    plots = {
        "macd": {"pane": "own", "group": "macd", "color": "#1f77b4"},
        "macd_signal": {"pane": "own", "group": "macd", "color": "#ff7f0e"},
        "macd_hist": {"pane": "own", "group": "macd", "color": "#7f7f7f", "style": "histogram"},
    }

    @classmethod
    def validate_parameters(cls, parameters: dict[str, Any]) -> None:
        _require_less(parameters, "fast", "slow")

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["slow"] + parameters["signal"] - 1

    @classmethod
    def lookback(cls, parameters: dict[str, Any]) -> int:
        settle = ema_settle_bars(2.0 / (parameters["slow"] + 1)) + ema_settle_bars(
            2.0 / (parameters["signal"] + 1)
        )
        return cls.warmup(parameters) + 1 + settle

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        line, signal_line, hist = macd(
            _close(ohlcv), parameters["fast"], parameters["slow"], parameters["signal"]
        )
        return {"macd": line, "macd_signal": signal_line, "macd_hist": hist}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return macd_cross_signals_nb(
            arrays.close,
            parameters["fast"],
            parameters["slow"],
            parameters["signal"],
            _out(arrays.close),
        )

    @classmethod
    def explain(cls, decision: Decision) -> str:
        p = decision.parameters
        return _cross_reason(
            decision,
            "macd",
            "macd_signal",
            f"MACD({p['fast']},{p['slow']}) line",
            f"its signal line ({p['signal']})",
        )


class BollingerReversion(BaseStrategy):
    """Bollinger Band mean reversion: fade moves outside the bands once price comes back in.

    The bands are SMA(``n``) of the close plus and minus ``k`` population standard deviations of
    the same ``n`` closes. BUY on a candle when the previous close was at or below the previous
    lower band and this close is above this candle's lower band (price came back inside from
    below). SELL when the previous close was at or above the previous upper band and this close
    is below this candle's upper band (it came back inside from above). Closing outside the
    bands does nothing by itself: the rule waits for the return.

    Parameters: ``n`` (candles, >= 2) and ``k`` (band width in standard deviations).
    Warm-up: ``n`` candles (the bands need ``n`` closes, and the rule compares two consecutive
    candles).
    """

    name = "bollinger_reversion"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    title = "Bollinger reversion"
    columns = ("close",)
    parameter_specs = (
        Parameter("n", int, 20, minimum=2, maximum=500, step=5,
                  help="Band length: SMA and standard deviation window, in candles."),
        Parameter("k", float, 2.0, minimum=0.1, maximum=10.0, step=0.25,
                  help="Band half-width, in standard deviations."),
    )  # fmt: skip
    plots = {
        "bb_middle": {"pane": "price", "group": "bollinger", "color": "#7f7f7f"},
        "bb_upper": {"pane": "price", "group": "bollinger", "color": "#2ca02c"},
        "bb_lower": {"pane": "price", "group": "bollinger", "color": "#d62728"},
    }

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["n"]

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        middle, upper, lower = bollinger(_close(ohlcv), parameters["n"], parameters["k"])
        return {"bb_middle": middle, "bb_upper": upper, "bb_lower": lower}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return bollinger_reentry_signals_nb(
            arrays.close, parameters["n"], parameters["k"], _out(arrays.close)
        )

    @classmethod
    def explain(cls, decision: Decision) -> str:
        close, prev_close = decision.candle["close"], decision.prev_candle["close"]
        lower, upper = decision.now["bb_lower"], decision.now["bb_upper"]
        if decision.action is Action.BUY:
            return (
                f"close {fmt(close)} is back above the lower band {fmt(lower)} after closing at "
                f"or below it ({fmt(prev_close)} <= {fmt(decision.prev['bb_lower'])})"
            )
        if decision.action is Action.SELL:
            return (
                f"close {fmt(close)} is back below the upper band {fmt(upper)} after closing at "
                f"or above it ({fmt(prev_close)} >= {fmt(decision.prev['bb_upper'])})"
            )
        if close <= lower:
            return (
                f"close {fmt(close)} is at or below the lower band {fmt(lower)}: waiting for a "
                "close back above it"
            )
        if close >= upper:
            return (
                f"close {fmt(close)} is at or above the upper band {fmt(upper)}: waiting for a "
                "close back below it"
            )
        return (
            f"close {fmt(close)} is inside the bands [{fmt(lower)}, {fmt(upper)}] and was "
            "inside on the previous candle too"
        )


class DonchianBreakout(BaseStrategy):
    """Donchian channel breakout (trend following, the Turtle rule).

    The channel of a candle is the highest high and the lowest low of the last ``n`` candles,
    that candle included. BUY on a candle whose close is above the previous candle's upper
    channel (a new ``n``-candle high close); SELL on a candle whose close is below the previous
    candle's lower channel. Every breaking candle signals, so a strong trend gives repeated
    signals in its direction.

    Parameters: ``n``, the channel length in candles.
    Warm-up: ``n`` candles (the channel needs ``n`` candles, and the rule uses the previous
    candle's channel).
    """

    name = "donchian_breakout"
    releases_gil = True  # its kernel is nogil: sweeps use threads
    title = "Donchian breakout"
    columns = ("high", "low", "close")
    parameter_specs = (
        Parameter("n", int, 20, minimum=1, maximum=1000, step=5,
                  help="Channel length, in candles."),
    )  # fmt: skip
    plots = {
        "donchian_upper": {"pane": "price", "group": "donchian", "color": "#2ca02c"},
        "donchian_lower": {"pane": "price", "group": "donchian", "color": "#d62728"},
        "donchian_middle": {"pane": "price", "group": "donchian", "color": "#7f7f7f"},
    }

    @classmethod
    def warmup(cls, parameters: dict[str, Any]) -> int:
        return parameters["n"]

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> dict:
        upper, lower, middle = donchian(ohlcv["high"], ohlcv["low"], parameters["n"])
        return {"donchian_upper": upper, "donchian_lower": lower, "donchian_middle": middle}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
        return cls.signals_from_arrays(_Columns(ohlcv), parameters)

    @classmethod
    def signals_from_arrays(cls, arrays: OHLCVArrays, parameters: dict[str, Any]) -> np.ndarray:
        """``generate_signals`` on the columns as float64 arrays (a sweep's path)."""
        return donchian_breakout_signals_nb(
            arrays.high, arrays.low, arrays.close, parameters["n"], _out(arrays.close)
        )

    @classmethod
    def explain(cls, decision: Decision) -> str:
        n = decision.parameters["n"]
        close = decision.candle["close"]
        upper, lower = decision.prev["donchian_upper"], decision.prev["donchian_lower"]
        if decision.action is Action.BUY:
            return f"close {fmt(close)} broke above the previous {n}-candle high {fmt(upper)}"
        if decision.action is Action.SELL:
            return f"close {fmt(close)} broke below the previous {n}-candle low {fmt(lower)}"
        return (
            f"close {fmt(close)} is within the previous {n}-candle channel "
            f"[{fmt(lower)}, {fmt(upper)}]"
        )


BUILTIN_STRATEGIES: dict[str, type[BaseStrategy]] = {
    cls.name: cls
    for cls in (
        SMACrossover,
        EMACrossover,
        RSIReversion,
        MACDCrossover,
        BollingerReversion,
        DonchianBreakout,
    )
}
