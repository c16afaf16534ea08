"""The built-in strategies: their rules, warm-ups, and one code path for bots and backtests."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest

from strategies import indicators
from strategies.base import Action, BaseStrategy
from strategies.builtin import (
    BUILTIN_STRATEGIES,
    BollingerReversion,
    DonchianBreakout,
    RSIReversion,
    SMACrossover,
)
from strategies.lookahead import random_walk_ohlcv
from tests.strategies.conftest import CASES, frame_from_close
from tests.strategies.test_kernels import (
    reference_band,
    reference_breakout,
    reference_cross,
    reference_level,
)


def reference_signals(name: str, frame: pd.DataFrame, p: dict) -> list[int]:
    """Each documented rule in plain Python over the indicator module's arrays."""
    close = frame["close"].to_numpy()
    if name == "sma_crossover":
        return reference_cross(
            indicators.sma(close, p["fast"]).tolist(), indicators.sma(close, p["slow"]).tolist()
        )
    if name == "ema_crossover":
        return reference_cross(
            indicators.ema(close, p["fast"]).tolist(), indicators.ema(close, p["slow"]).tolist()
        )
    if name == "macd_crossover":
        line, signal_line, _ = indicators.macd(close, p["fast"], p["slow"], p["signal"])
        return reference_cross(line.tolist(), signal_line.tolist())
    if name == "rsi_reversion":
        rsi = indicators.rsi(close, p["period"]).tolist()
        return reference_level(rsi, p["oversold"], p["overbought"])
    if name == "bollinger_reversion":
        _, upper, lower = indicators.bollinger(close, p["n"], p["k"])
        return reference_band(close.tolist(), lower.tolist(), upper.tolist())
    if name == "donchian_breakout":
        upper, lower, _ = indicators.donchian(frame["high"], frame["low"], p["n"])
        return reference_breakout(close.tolist(), upper.tolist(), lower.tolist())
    raise AssertionError(name)


@pytest.mark.parametrize("name, params", CASES)
def test_builtin_generate_signals_follows_the_documented_rule(name, params, ohlcv) -> None:
    cls = BUILTIN_STRATEGIES[name]
    signals = cls.generate_signals(ohlcv, params)
    # Equal to the rule with no warm-up masking at all: the declared warm-up hides nothing.
    assert signals.tolist() == reference_signals(name, ohlcv, cls.clean_parameters(params))
    assert (signals == 1).sum() >= 2 and (signals == -1).sum() >= 2  # the data exercises it


@pytest.mark.parametrize("name, params", CASES)
def test_builtin_warmup_is_tight(name, params, ohlcv) -> None:
    """Every indicator is defined from bar warmup - 1 on (the rule compares it with bar warmup),
    and some indicator is still undefined at warmup - 2: no signal is possible earlier."""
    cls = BUILTIN_STRATEGIES[name]
    warmup = cls.warmup(params)
    values = cls.compute_indicators(ohlcv, params)
    assert all(np.isfinite(v[warmup - 1 :]).all() for v in values.values())
    if warmup >= 2:
        assert any(math.isnan(v[warmup - 2]) for v in values.values())
    assert cls.lookback(params) >= warmup + 1


@pytest.mark.parametrize("name, params", CASES)
def test_builtin_process_data_on_every_prefix_equals_generate_signals(name, params, ohlcv):
    """A bot fed the history up to bar i decides exactly as the backtest did at bar i."""
    cls = BUILTIN_STRATEGIES[name]
    full = cls.generate_signals(ohlcv, params)
    full_indicators = cls.compute_indicators(ohlcv, params)
    strategy = cls(params)
    for i in range(len(ohlcv)):
        signal = strategy.process_data(ohlcv.iloc[: i + 1])
        assert signal.action.code == full[i], f"bar {i}"
        assert signal.price == ohlcv["close"].iloc[i]
        assert signal.time == ohlcv.index[i]
        for key, values in full_indicators.items():
            assert signal.indicators[key] == pytest.approx(values[i], rel=1e-12, nan_ok=True)


@pytest.mark.parametrize("name, params", CASES)
def test_builtin_process_data_on_rolling_windows_equals_generate_signals(name, params) -> None:
    """Windows of ``lookback`` candles (what a bot fetches) reproduce the full-history signals;
    for EMA-based rules that is the point where the start value has faded below precision."""
    cls = BUILTIN_STRATEGIES[name]
    data = random_walk_ohlcv(420, seed=11, volatility=5e-3)
    full = cls.generate_signals(data, params)
    length = cls.lookback(params)
    assert length < 250  # keeps the test meaningful: many windows
    strategy = cls(params)
    decided = [
        strategy.process_data(data.iloc[i - length + 1 : i + 1]).action.code
        for i in range(length - 1, len(data))
    ]
    assert decided == full[length - 1 :].tolist()
    assert np.count_nonzero(decided) >= 2


def test_sma_crossover_signals_on_a_known_cross() -> None:
    frame = frame_from_close([10, 9, 8, 7, 6, 7, 8, 9, 10])
    # SMA(2) - SMA(4) from bar 3: -1, -1, -0.5, +0.5, +1, +1: the cross is at bar 6.
    signals = SMACrossover.generate_signals(frame, {"fast": 2, "slow": 4})
    assert signals.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0]
    signal = SMACrossover({"fast": 2, "slow": 4}).process_data(frame.iloc[:7])
    assert signal.action is Action.BUY
    assert signal.strength == 1.0
    assert signal.price == 8.0
    assert dict(signal.indicators) == {"fast_sma": 7.5, "slow_sma": 7.0}
    assert signal.reason == (
        "SMA(2) crossed above SMA(4): 6.5 < 7 on the previous candle, 7.5 > 7 now"
    )


def test_sma_crossover_touch_and_pass_through_equality_do_not_signal() -> None:
    # fast = SMA(1) = close, slow = SMA(2): fast - slow = (close[i] - close[i-1]) / 2, so the
    # sign of each close change is the side of the fast SMA.
    frame = frame_from_close([10, 9, 10, 10, 9, 9, 10, 9, 9, 9])
    signals = SMACrossover.generate_signals(frame, {"fast": 1, "slow": 2})
    # bar 2: below then above: buy (the first bar that may signal, warm-up 2). bar 3: equal
    # (a touch). bar 4: equal then below: no sell. bar 5: equal. bar 6: equal then above: no
    # buy. bar 7: above then below: sell. bars 8-9: equal.
    assert signals.tolist() == [0, 0, 1, 0, 0, 0, 0, -1, 0, 0]
    hold = SMACrossover({"fast": 1, "slow": 2}).process_data(frame.iloc[:5])
    assert hold.action is Action.HOLD
    assert "from equal on the previous candle; equality is not a side" in hold.reason


def test_rsi_reversion_buys_when_rsi_leaves_oversold() -> None:
    # A fall drives RSI(2) to 0 (only losses); the first rise lifts it above 30.
    frame = frame_from_close([10, 9, 8, 7, 8, 9, 10, 11, 10.5])
    params = {"period": 2, "oversold": 30.0, "overbought": 70.0}
    rsi = RSIReversion.compute_indicators(frame, params)["rsi"]
    assert rsi[3] == 0.0 and rsi[4] > 30.0
    signals = RSIReversion.generate_signals(frame, params)
    assert signals[4] == 1
    assert rsi[7] >= 70.0 and rsi[8] < 70.0
    assert signals[8] == -1
    assert np.count_nonzero(signals) == 2
    signal = RSIReversion(params).process_data(frame.iloc[:5])
    assert signal.action is Action.BUY
    assert signal.reason.startswith("RSI(2) rose out of oversold: 0 <= 30 on the previous candle")


def test_bollinger_reversion_waits_for_the_return_inside_the_bands() -> None:
    frame = frame_from_close([10, 10.2, 9.9, 10.1, 10.0, 9.0, 9.5, 10.0])
    params = {"n": 4, "k": 1.0}
    values = BollingerReversion.compute_indicators(frame, params)
    close = frame["close"].to_numpy()
    assert close[5] <= values["bb_lower"][5] and close[6] > values["bb_lower"][6]
    signals = BollingerReversion.generate_signals(frame, params)
    assert signals.tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    waiting = BollingerReversion(params).process_data(frame.iloc[:6])
    assert waiting.action is Action.HOLD
    assert "waiting for a close back above it" in waiting.reason


def test_donchian_breakout_compares_with_the_previous_channel() -> None:
    frame = frame_from_close([10, 11, 10.5, 11, 11.5, 9, 9.5])
    signals = DonchianBreakout.generate_signals(frame, {"n": 3})
    # bar 3: close 11 equals the previous 3-bar high 11: no breakout. bar 4: 11.5 > 11: buy.
    # bar 5: 9 < previous low 10.5: sell. bar 6: 9.5 is inside [9, 11.5].
    assert signals.tolist() == [0, 0, 0, 0, 1, -1, 0]
    signal = DonchianBreakout({"n": 3}).process_data(frame.iloc[:5])
    assert signal.reason == "close 11.5 broke above the previous 3-candle high 11"


@pytest.mark.parametrize("cls", BUILTIN_STRATEGIES.values(), ids=lambda c: c.name)
def test_builtin_documents_rule_parameters_and_warmup(cls: type[BaseStrategy]) -> None:
    doc = inspect.getdoc(cls)
    assert "BUY" in doc and "SELL" in doc
    assert "Parameters:" in doc and "Warm-up:" in doc
    for spec in cls.parameter_specs:
        assert f"``{spec.name}``" in doc
        assert spec.help
    assert cls.title and cls.name
    assert set(cls.compute_indicators(frame_from_close([1.0] * 3))) == set(cls.plots)


@pytest.mark.parametrize("name, params", CASES)
def test_builtin_explains_every_decision(name, params, ohlcv) -> None:
    cls = BUILTIN_STRATEGIES[name]
    strategy = cls(params)
    signals = cls.generate_signals(ohlcv, params)
    seen = set()
    for i in range(cls.warmup(params), len(ohlcv)):
        action = Action.from_code(signals[i])
        if action in seen:
            continue
        signal = strategy.process_data(ohlcv.iloc[: i + 1])
        assert signal.action is action
        assert signal.reason and "n/a" not in signal.reason
        assert signal.strength == (0.0 if action is Action.HOLD else 1.0)
        seen.add(action)
    assert seen == set(Action)


def test_rsi_plot_spec_carries_the_parameter_levels() -> None:
    strategy = RSIReversion({"oversold": 25, "overbought": 80})
    strategy.process_data(frame_from_close(np.linspace(1, 2, 30)))
    assert strategy.get_indicators()["rsi"]["levels"] == [25.0, 80.0]
