"""The fused strategy kernels (what ``generate_signals`` runs) against the composition they
replace: the rule kernels of ``strategies.kernels`` applied to ``strategies.indicators``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import indicators as ind
from strategies import kernels as k
from strategies.base import OHLCVError
from strategies.builtin import SMACrossover
from strategies.indicators import BOLLINGER_DIRECT_MAX
from strategies.lookahead import random_walk_ohlcv


def composed(name: str, frame_arrays: dict[str, np.ndarray], p: dict) -> np.ndarray:
    """The rule written as indicator arrays plus a rule kernel, warm-up zeroed."""
    close, high, low = frame_arrays["close"], frame_arrays["high"], frame_arrays["low"]
    if name == "sma":
        out, warm = (
            k.cross_signals_nb(ind.sma(close, p["fast"]), ind.sma(close, p["slow"])),
            p["slow"],
        )
    elif name == "ema":
        out, warm = (
            k.cross_signals_nb(ind.ema(close, p["fast"]), ind.ema(close, p["slow"])),
            p["slow"],
        )
    elif name == "macd":
        line, signal_line, _ = ind.macd(close, p["fast"], p["slow"], p["signal"])
        out, warm = k.cross_signals_nb(line, signal_line), p["slow"] + p["signal"] - 1
    elif name == "rsi":
        values = ind.rsi(close, p["period"])
        out, warm = k.level_reentry_signals_nb(values, p["lower"], p["upper"]), p["period"] + 1
    elif name == "bollinger":
        _, upper, lower = ind.bollinger(close, p["n"], p["k"])
        out, warm = k.band_reentry_signals_nb(close, lower, upper), p["n"]
    else:
        upper, lower, _ = ind.donchian(high, low, p["n"])
        out, warm = k.breakout_signals_nb(close, upper, lower), p["n"]
    out[:warm] = 0
    return out


def fused(name: str, a: dict[str, np.ndarray], p: dict) -> np.ndarray:
    close = a["close"]
    if name == "sma":
        return k.sma_cross_signals_nb(close, p["fast"], p["slow"])
    if name == "ema":
        return k.ema_cross_signals_nb(close, p["fast"], p["slow"])
    if name == "macd":
        return k.macd_cross_signals_nb(close, p["fast"], p["slow"], p["signal"])
    if name == "rsi":
        return k.rsi_reentry_signals_nb(close, p["period"], p["lower"], p["upper"])
    if name == "bollinger":
        return k.bollinger_reentry_signals_nb(close, p["n"], p["k"])
    return k.donchian_breakout_signals_nb(a["high"], a["low"], close, p["n"])


CASES = [
    ("sma", {"fast": 10, "slow": 30}),
    ("sma", {"fast": 1, "slow": 2}),
    ("sma", {"fast": 7, "slow": 300}),
    ("ema", {"fast": 12, "slow": 26}),
    ("ema", {"fast": 1, "slow": 3}),
    ("ema", {"fast": 20, "slow": 400}),
    ("macd", {"fast": 12, "slow": 26, "signal": 9}),
    ("macd", {"fast": 1, "slow": 2, "signal": 2}),
    ("macd", {"fast": 5, "slow": 100, "signal": 30}),
    ("rsi", {"period": 14, "lower": 30.0, "upper": 70.0}),
    ("rsi", {"period": 2, "lower": 10.0, "upper": 90.0}),
    ("rsi", {"period": 60, "lower": 48.0, "upper": 52.0}),
    ("bollinger", {"n": 20, "k": 2.0}),
    ("bollinger", {"n": 2, "k": 1.0}),  # bands through the closes: ties everywhere
    ("bollinger", {"n": 3, "k": 0.5}),
    ("bollinger", {"n": 5, "k": 1.0}),
    ("bollinger", {"n": 300, "k": 0.25}),
    ("donchian", {"n": 20}),
    ("donchian", {"n": 1}),
    ("donchian", {"n": 2}),
    ("donchian", {"n": 3}),
    ("donchian", {"n": 250}),
]


def arrays(frame) -> dict[str, np.ndarray]:
    return {c: np.ascontiguousarray(frame[c].to_numpy()) for c in ("high", "low", "close")}


@pytest.mark.parametrize("name, params", CASES, ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_kernel_equals_indicators_plus_rule(name, params, seed) -> None:
    # 6,000 bars span several blocks of every kernel; high volatility makes many signals.
    a = arrays(random_walk_ohlcv(6_000, seed=seed, volatility=5e-3))
    expected = composed(name, a, params)
    got = fused(name, a, params)
    assert got.dtype == np.int8
    assert np.count_nonzero(expected) > 10
    np.testing.assert_array_equal(got, expected)


def with_flat_runs(a: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Long runs of one repeated candle (an illiquid market) spliced into the series."""
    rng = np.random.default_rng(seed)
    out = {key: value.copy() for key, value in a.items()}
    n = len(out["close"])
    for start in rng.integers(0, n - 500, 6):
        length = int(rng.integers(50, 500))
        level = out["close"][start]
        for values in out.values():
            values[start : start + length] = level
    return out


def assert_fused_equals_composed(name: str, a: dict[str, np.ndarray], params: dict) -> None:
    got, expected = fused(name, a, params), composed(name, a, params)
    if name == "bollinger" and params["n"] > BOLLINGER_DIRECT_MAX:
        # A window of two price levels can put a band exactly on a close (16 bars at one level
        # and 4 at another put the upper 2-sigma band on the higher level; 3 and 3 put both
        # 1-sigma bands on the levels): the rule then compares equal numbers, and any rounding
        # decides. Only such ties may differ (shorter windows share ``bollinger``'s arithmetic).
        _, upper, lower = ind.bollinger(a["close"], params["n"], params["k"])
        close = a["close"]
        for i in np.flatnonzero(got != expected):
            ties = [
                abs(close[j] - band[j]) <= 1e-9 * abs(close[j])
                for j in (i - 1, i)
                for band in (upper, lower)
            ]
            assert any(ties), f"{name} {params} bar {i}: signals differ away from a tie"
        return
    np.testing.assert_array_equal(got, expected, err_msg=f"{name} {params}")


@pytest.mark.parametrize("name, params", CASES, ids=str)
def test_fused_kernel_equals_composition_through_flat_markets(name, params) -> None:
    a = with_flat_runs(arrays(random_walk_ohlcv(6_000, seed=3, volatility=5e-3)), seed=3)
    assert_fused_equals_composed(name, a, params)


@pytest.mark.parametrize("name, params", CASES, ids=str)
def test_fused_kernel_is_silent_on_a_constant_series(name, params) -> None:
    # 0.1 is not exact in binary: running sums would round differently window by window.
    a = {key: np.full(3_000, 0.1) for key in ("high", "low", "close")}
    assert not fused(name, a, params).any()


@pytest.mark.parametrize("name, params", CASES, ids=str)
@pytest.mark.parametrize("size", [0, 1, 2, 5, 30])
def test_fused_kernel_on_series_shorter_than_its_warmup(name, params, size) -> None:
    a = arrays(random_walk_ohlcv(size, seed=4, volatility=5e-3))
    np.testing.assert_array_equal(fused(name, a, params), composed(name, a, params))


@settings(max_examples=60, deadline=None)
@given(
    closes=st.lists(st.sampled_from([1.0, 1.1, 1.2, 1.3, 0.7]), min_size=0, max_size=120),
    fast=st.integers(1, 6),
    extra=st.integers(1, 8),
    n=st.integers(1, 9),
)
def test_fused_kernels_equal_composition_on_few_distinct_prices(closes, fast, extra, n) -> None:
    # Few distinct values: equal averages, touches and flat windows are frequent.
    close = np.array(closes, dtype=np.float64)
    a = {"close": close, "high": close * 1.01, "low": close * 0.99}
    slow = fast + extra
    for name, params in [
        ("sma", {"fast": fast, "slow": slow}),
        ("ema", {"fast": fast, "slow": slow}),
        ("macd", {"fast": fast, "slow": slow, "signal": n}),
        ("rsi", {"period": n + 1, "lower": 30.0, "upper": 70.0}),
        ("bollinger", {"n": n + 1, "k": 1.0}),
        ("donchian", {"n": n}),
    ]:
        assert_fused_equals_composed(name, a, params)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: k.sma_cross_signals_nb(x, 0, 3),
        lambda x: k.ema_cross_signals_nb(x, 2, 0),
        lambda x: k.macd_cross_signals_nb(x, 2, 3, 0),
        lambda x: k.rsi_reentry_signals_nb(x, 0, 30.0, 70.0),
        lambda x: k.bollinger_reentry_signals_nb(x, 0, 2.0),
        lambda x: k.donchian_breakout_signals_nb(x, x, x, 0),
    ],
)
def test_fused_kernels_refuse_lengths_below_one(call) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        call(np.ones(50))


def test_sma_kernel_falls_back_to_twosum_for_values_too_large_for_its_offset() -> None:
    # Prices near 1e299: four times a block's sum would overflow, so the exact prefix sums take
    # the TwoSum path; the signals still equal the indicators'.
    a = arrays(random_walk_ohlcv(3_000, seed=5, volatility=5e-3))
    big = {key: values * 1e295 for key, values in a.items()}
    params = {"fast": 10, "slow": 30}
    expected = composed("sma", big, params)
    assert np.count_nonzero(expected) > 10
    np.testing.assert_array_equal(fused("sma", big, params), expected)


@pytest.mark.parametrize("size", [5, 30, 6_000])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sma_kernel_refuses_a_non_finite_price_wherever_it_is(size, bad) -> None:
    # SMACrossover skips the separate finiteness scan: its kernel must find every bad value.
    close = arrays(random_walk_ohlcv(size, seed=6))["close"]
    for where in {0, size // 2, size - 1}:
        broken = close.copy()
        broken[where] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            k.sma_cross_signals_nb(broken, 10, 30)


def test_sma_crossover_reports_a_nan_close_as_validation_does() -> None:
    data = random_walk_ohlcv(3_000, seed=7)
    data.iloc[1_234, data.columns.get_loc("close")] = np.nan
    with pytest.raises(OHLCVError, match=r"'close' holds nan .* \(bar 1234\)"):
        SMACrossover.generate_signals(data, {"fast": 5, "slow": 20})
