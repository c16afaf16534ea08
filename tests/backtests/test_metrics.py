"""Performance metrics: each formula on numbers small enough to check by hand, and the edge cases
the module docstring promises."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtests.engine import run_backtest
from backtests.metrics import (
    METRIC_NAMES,
    _moments_nb,
    bar_returns,
    bars_per_year,
    cagr,
    compute_metrics,
    equity_moments_nb,
    expectancy,
    exposure,
    json_safe,
    max_drawdown,
    profit_factor,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    win_rate,
)
from tests.backtests.support import Scripted, flat_bars


def index(n: int, minutes: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq=f"{minutes}min", tz="UTC")


def test_bars_per_year_from_the_index_spacing() -> None:
    assert bars_per_year(index(10, 1)) == 365 * 24 * 60
    assert bars_per_year(index(10, 60)) == 365 * 24
    assert bars_per_year(index(10, 1440)) == 365
    # A missing candle does not move the median spacing.
    gappy = index(10, 60).delete(4)
    assert bars_per_year(gappy) == 365 * 24
    assert math.isnan(bars_per_year(index(1, 60)))
    assert math.isnan(bars_per_year(index(0, 60)))


def test_returns_total_return_and_cagr() -> None:
    equity = np.array([110.0, 99.0, 121.0])
    assert bar_returns(equity, 100.0) == pytest.approx([0.1, -0.1, 121 / 99 - 1])
    assert total_return(equity, 100.0) == pytest.approx(0.21)
    # 3 bars at 3 bars per year: exactly one year, so CAGR equals the total return.
    assert cagr(equity, 100.0, 3.0) == pytest.approx(0.21)
    assert cagr(equity, 100.0, 6.0) == pytest.approx(1.21**2 - 1)  # half a year
    assert cagr(np.array([0.0]), 100.0, 3.0) == -1.0
    assert math.isnan(cagr(equity, 100.0, math.nan))
    assert cagr(np.array([200.0]), 100.0, 525_600.0) == math.inf
    assert total_return(np.array([]), 100.0) == 0.0 and cagr(np.array([]), 100.0, 3.0) == 0.0


def test_sharpe_and_sortino_formulas() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.0])
    mean = r.mean()
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 3)
    downside = math.sqrt((0.02**2) / 4)
    assert sharpe_ratio(r, 365.0) == pytest.approx(mean / std * math.sqrt(365))
    assert sortino_ratio(r, 365.0) == pytest.approx(mean / downside * math.sqrt(365))
    # NaN returns (after a non-positive equity) are left out.
    assert sharpe_ratio(np.append(r, np.nan), 365.0) == pytest.approx(sharpe_ratio(r, 365.0))


def test_ratio_edge_cases() -> None:
    flat = np.zeros(5)
    assert sharpe_ratio(flat, 365.0) == 0.0 and sortino_ratio(flat, 365.0) == 0.0
    assert sharpe_ratio(np.array([0.01]), 365.0) == 0.0  # one return: no deviation
    steady = np.full(4, 0.01)
    assert sharpe_ratio(steady, 365.0) == math.inf
    assert sortino_ratio(steady, 365.0) == math.inf  # no losing bar
    assert sortino_ratio(-steady, 365.0) < 0
    assert math.isnan(sharpe_ratio(np.array([0.01, 0.02]), math.nan))


def test_max_drawdown_depth_and_duration() -> None:
    # Peak 120 at bar 1, trough 90 at bar 3 (-25 %), back to 120 at bar 5.
    equity = np.array([110.0, 120.0, 100.0, 90.0, 115.0, 120.0, 130.0])
    assert max_drawdown(equity, 100.0) == (pytest.approx(0.25), 4)
    # Never recovers: the duration runs to the last bar.
    assert max_drawdown(np.array([90.0, 80.0, 85.0]), 100.0) == (pytest.approx(0.2), 3)
    # From the starting cash: the peak is bar -1.
    assert max_drawdown(np.array([95.0, 100.0]), 100.0) == (pytest.approx(0.05), 2)
    assert max_drawdown(np.array([100.0, 101.0, 102.0]), 100.0) == (0.0, 0)
    assert max_drawdown(np.array([]), 100.0) == (0.0, 0)


def test_trade_metrics() -> None:
    pnl = np.array([10.0, -5.0, 20.0, -10.0, 0.0])
    assert win_rate(pnl) == pytest.approx(0.4)
    assert profit_factor(pnl) == pytest.approx(30 / 15)
    assert expectancy(pnl) == pytest.approx(3.0)
    assert profit_factor(np.array([5.0])) == math.inf
    assert profit_factor(np.array([-5.0])) == 0.0
    none = np.array([])
    assert math.isnan(win_rate(none)) and math.isnan(profit_factor(none))
    assert math.isnan(expectancy(none)) and math.isnan(profit_factor(np.array([0.0])))
    assert exposure(np.array([0, 1, 1, -1], dtype=np.int8)) == 0.75
    assert exposure(np.array([], dtype=np.int8)) == 0.0


def test_compute_metrics_keys_and_a_backtest_without_trades() -> None:
    result = run_backtest(flat_bars([10.0] * 20), Scripted)
    metrics = result.metrics
    assert tuple(metrics) == METRIC_NAMES
    assert metrics["n_trades"] == 0 and metrics["total_return"] == 0.0
    assert metrics["sharpe"] == 0.0 and metrics["sortino"] == 0.0
    assert math.isnan(metrics["win_rate"]) and math.isnan(metrics["profit_factor"])
    assert metrics["max_drawdown"] == 0.0 and metrics["exposure"] == 0.0
    assert metrics["final_equity"] == 10_000.0
    empty = compute_metrics(np.array([]), 100.0, np.array([]), np.array([]), math.nan)
    assert empty["total_return"] == 0.0 and empty["final_equity"] == 100.0


def test_json_safe_turns_non_finite_numbers_into_null() -> None:
    value = {
        "a": math.nan,
        "b": math.inf,
        "c": np.float64(1.5),
        "d": np.int64(3),
        "e": [np.nan, 2.0],
        "f": pd.Timestamp("2024-01-01", tz="UTC"),
        "g": pd.NaT,
        "h": np.bool_(True),
        1: "x",
    }
    safe = json_safe(value)
    assert safe == {
        "a": None,
        "b": None,
        "c": 1.5,
        "d": 3,
        "e": [None, 2.0],
        "f": "2024-01-01T00:00:00+00:00",
        "g": None,
        "h": True,
        "1": "x",
    }
    json.dumps(safe, allow_nan=False)
    metrics = run_backtest(flat_bars([10.0] * 5), Scripted).metrics
    json.dumps(json_safe(metrics), allow_nan=False)


def test_compute_metrics_return_statistics_equal_the_single_functions() -> None:
    rng = np.random.default_rng(0)
    equity = 100.0 * np.cumprod(1 + rng.normal(0, 0.01, 500))
    equity[200] = 0.0  # the next return is undefined and left out
    metrics = compute_metrics(equity, 100.0, np.array([]), np.zeros(500), 8760.0)
    returns = bar_returns(equity, 100.0)
    assert np.isnan(returns[201])
    assert metrics["sharpe"] == sharpe_ratio(returns, 8760.0)
    assert metrics["sortino"] == sortino_ratio(returns, 8760.0)
    finite = returns[np.isfinite(returns)]
    expected = finite.mean() / finite.std(ddof=1) * math.sqrt(8760)
    assert metrics["sharpe"] == pytest.approx(expected, rel=1e-10)
    depth, duration = max_drawdown(equity, 100.0)
    assert (metrics["max_drawdown"], metrics["max_drawdown_duration"]) == (depth, duration)
    assert depth == 1.0  # the equity touched 0


def reference_drawdown(equity: list[float], initial: float) -> tuple[float, int]:
    """The deepest fall below the running peak and the bars from that peak to recovery."""
    best = (0.0, 0)
    peak_value, peak_bar = initial, -1
    for i, value in enumerate(equity):
        if value > peak_value:
            peak_value, peak_bar = value, i
            continue
        depth = 1 - value / peak_value
        if depth > best[0]:
            later = [j for j in range(i + 1, len(equity)) if equity[j] >= peak_value]
            end = later[0] if later else len(equity) - 1
            best = (depth, end - peak_bar)
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 40), max_size=40).map(lambda v: [float(x) for x in v]),
    st.integers(1, 40),
)
def test_max_drawdown_equals_a_plain_reference(values: list[float], initial: int) -> None:
    """Small integers: many exact ties between peaks, troughs and recoveries."""
    equity = np.asarray(values, dtype=np.float64)
    expected = reference_drawdown(values, float(initial))
    assert max_drawdown(equity, float(initial)) == expected
    metrics = compute_metrics(equity, float(initial), np.array([]), np.zeros(len(values)), 1.0)
    assert (metrics["max_drawdown"], metrics["max_drawdown_duration"]) == expected


# -- the sweep's one-pass kernels equal the documented formulas --------------------------------


def reference_moments(returns: np.ndarray) -> tuple[int, float, float, float]:
    """count, mean, sum of squared deviations, sum of squared negative returns (plain numpy)."""
    valid = returns[np.isfinite(returns)]
    if valid.size == 0:
        return 0, 0.0, 0.0, 0.0
    mean = valid.mean()
    return (
        valid.size,
        mean,
        float(((valid - mean) ** 2).sum()),
        float((valid[valid < 0] ** 2).sum()),
    )


equity_values = st.one_of(
    st.floats(1.0, 2e4, allow_nan=False),
    st.sampled_from([0.0, -50.0, 1e4, 1e4]),  # ruin, a short gone negative, flat stretches
)


@settings(max_examples=80, deadline=None)
@given(st.lists(equity_values, min_size=0, max_size=9_000), st.sampled_from([1e4, 0.0]))
def test_equity_moments_nb_is_moments_of_bar_returns_bit_for_bit(values, initial) -> None:
    equity = np.array(values, dtype=np.float64)
    returns = bar_returns(equity, initial)
    # The blocked, no-array kernel equals the array kernel exactly (a sweep relies on it) ...
    assert equity_moments_nb(equity, initial) == _moments_nb(returns)
    # ... and both equal the formula up to rounding.
    count, mean, squares, downside = _moments_nb(returns)
    expected = reference_moments(returns)
    assert count == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-9, abs=1e-12)
    assert squares == pytest.approx(expected[2], rel=1e-7, abs=1e-12)
    assert downside == pytest.approx(expected[3], rel=1e-9, abs=1e-12)
