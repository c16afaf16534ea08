"""The sweep's fast paths equal the plain ones bit for bit.

A sweep evaluates each combination with ``signals_metrics``: the simulation feeds an equity fold
(``backtests.metrics``) instead of writing a curve, flat stretches are only counted, and
``SMACrossover`` computes its signals from prefix sums shared by all the combinations. Each of
these must give exactly what ``run_backtest`` reports, so a sweep's best row can be re-run and
shows the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtests.engine import (
    EngineOptions,
    build_result,
    run_backtest,
    signals_metrics,
    simulate,
)
from backtests.metrics import bars_per_year
from backtests.optimize import grid_search
from strategies.base import ohlcv_arrays, signals_evaluator, sweep_evaluator
from strategies.builtin import SMACrossover
from strategies.kernels import sma_cross_from_prefix, sma_cross_signals_nb, sma_prefix
from strategies.lookahead import random_walk_ohlcv
from tests.backtests.support import frame
from tests.backtests.test_engine import market, options_strategy

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plain_metrics(index: pd.DatetimeIndex, prices, signals, options: EngineOptions) -> dict:
    """The metrics the long way: the whole equity curve, then ``build_result`` (what
    ``run_backtest`` reports)."""
    simulation = simulate(*prices, signals, options=options)
    return build_result(index, prices[3], signals, simulation, options).metrics


def assert_identical(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        other = got[name]
        same = other == value or (math.isnan(value) and math.isnan(other))
        assert same, f"{name}: fold {other!r}, curve {value!r}"
        assert type(other) is type(value), name


def prices_of(data) -> tuple:
    return tuple(data[c].to_numpy() for c in ("open", "high", "low", "close"))


@PROPERTY
@given(market(), options_strategy)
def test_signals_metrics_equals_compute_metrics_of_the_curve(case, options) -> None:
    data, signals = case
    periods = bars_per_year(data.index)
    expected = plain_metrics(data.index, prices_of(data), signals, options)
    assert_identical(signals_metrics(prices_of(data), signals, options, periods), expected)


OPTION_SETS = [
    {},
    {"fill": "close"},
    {"allow_short": True, "slippage": 0.0005},
    {"size": 0.4, "fee": 0.0},
    {"stop_loss": 0.01, "take_profit": 0.02},
    {"trailing_stop": 0.015, "allow_short": True},
    {"close_at_end": True},
    {"fee_in_base": True, "fee": 0.002, "stop_loss": 0.01},
]


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("seed", [1, 2])
def test_long_series_cross_the_fold_buffer(options, seed) -> None:
    """20,000 bars: the 4,096-return buffer fills and flushes several times, and flat stretches
    of every length sit at every lane."""
    data = random_walk_ohlcv(20_000, seed=seed)
    rng = np.random.default_rng(seed)
    signals = np.zeros(len(data), dtype=np.int8)
    at = rng.choice(len(data), 600, replace=False)
    signals[at] = rng.choice(np.array([-1, 1], dtype=np.int8), 600)
    opts = EngineOptions(**options)
    periods = bars_per_year(data.index)
    expected = plain_metrics(data.index, prices_of(data), signals, opts)
    assert expected["n_trades"] > 100
    assert_identical(signals_metrics(prices_of(data), signals, opts, periods), expected)


def test_a_trade_on_bar_zero_and_a_ruined_short_take_the_general_path() -> None:
    """Bar 0 fills at its close (so the moments' shift is not 0 and flat bars cannot be
    skipped), and a short whose price triples loses more than the account (the returns after
    a non-positive equity are undefined, left out)."""
    closes = [100.0] * 5 + [150.0, 250.0, 320.0, 330.0, 330.0] + [330.0] * 10
    signals = [1, 0, -1, 0, -1] + [0] * 15
    data = frame(closes, closes, closes, closes, signals)
    options = EngineOptions(fill="close", allow_short=True, fee=0.01)
    periods = bars_per_year(data.index)
    sig = np.asarray(signals, dtype=np.int8)
    expected = plain_metrics(data.index, prices_of(data), sig, options)
    assert expected["final_equity"] < 0
    assert_identical(signals_metrics(prices_of(data), sig, options, periods), expected)


def test_no_bars_and_no_signals() -> None:
    data = random_walk_ohlcv(50, seed=3)
    periods = bars_per_year(data.index)
    quiet = np.zeros(len(data), dtype=np.int8)
    options = EngineOptions()
    assert_identical(
        signals_metrics(prices_of(data), quiet, options, periods),
        plain_metrics(data.index, prices_of(data), quiet, options),
    )
    empty = tuple(np.empty(0) for _ in range(4))
    none = np.empty(0, dtype=np.int8)
    assert_identical(
        signals_metrics(empty, none, options, math.nan),
        plain_metrics(data.index[:0], empty, none, options),
    )


# -- SMA crossover from shared prefix sums -----------------------------------------------------


def series(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == 0:  # a random walk of full-precision floats
        return 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
    if kind == 1:  # prices on a cent grid: window averages tie exactly
        return np.round(100.0 + np.cumsum(rng.integers(-1, 2, n)) * 0.01, 2)
    if kind == 2:  # long flat stretches of an inexact decimal (0.1 * k)
        return np.repeat(rng.integers(1, 5, n // 10 + 1) * 0.1, 10)[:n]
    return rng.integers(1, 4, n).astype(np.float64)  # few distinct values: many equal means


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sma_cross_from_prefix_equals_the_fused_kernel(kind, seed) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12_000))
    x = series(kind, n, rng)
    history = int(rng.integers(2, 400))
    prefix = sma_prefix(x, history)
    assert prefix.exact
    for _ in range(25):
        slow = int(rng.integers(2, history + 1))
        fast = int(rng.integers(1, slow))
        for a, b in ((fast, slow), (slow, fast)):
            expected = sma_cross_signals_nb(x, a, b)
            np.testing.assert_array_equal(sma_cross_from_prefix(x, prefix, a, b), expected)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from([0.1, 0.2, 0.3, 7.0, 1e-3]), min_size=1, max_size=300),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 30),
)
def test_sma_cross_from_prefix_on_few_distinct_prices(values, fast, slow, extra) -> None:
    x = np.asarray(values)
    prefix = sma_prefix(x, max(fast, slow) + extra)
    expected = sma_cross_signals_nb(x, fast, slow)
    np.testing.assert_array_equal(sma_cross_from_prefix(x, prefix, fast, slow), expected)


def test_sma_prefix_falls_back_for_huge_values_and_refuses_nan() -> None:
    x = np.linspace(1e299, 3e299, 5_000)
    prefix = sma_prefix(x, 50)
    assert not prefix.exact  # the TwoSum form: each pair is computed on its own
    np.testing.assert_array_equal(
        sma_cross_from_prefix(x, prefix, 5, 50), sma_cross_signals_nb(x, 5, 50)
    )
    # A pair longer than the shared history is computed on its own too.
    y = random_walk_ohlcv(3_000, seed=4)["close"].to_numpy()
    short = sma_prefix(y, 20)
    np.testing.assert_array_equal(
        sma_cross_from_prefix(y, short, 10, 60), sma_cross_signals_nb(y, 10, 60)
    )
    bad = y.copy()
    bad[1_234] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sma_prefix(bad, 20)
    with pytest.raises(ValueError, match="history"):
        sma_prefix(y, 0)


def test_sma_crossover_sweep_evaluator_equals_its_plain_signals() -> None:
    data = random_walk_ohlcv(6_000, seed=5)
    arrays = ohlcv_arrays(data)
    sets = [{"fast": f, "slow": s} for f in (1, 3, 12) for s in (15, 40, 90)]
    shared = sweep_evaluator(SMACrossover, data, arrays, sets)
    plain = signals_evaluator(SMACrossover)
    rows = np.concatenate([shared(sets[:4]), shared(sets[4:])])
    assert rows.dtype == np.int8
    for row, params in zip(rows, sets, strict=True):
        np.testing.assert_array_equal(row, plain(data, arrays, params))


class Broken(SMACrossover):
    name = "broken_sweep"

    @classmethod
    def signals_for_sweep(cls, arrays, parameter_sets):
        return lambda batch: np.full((len(batch), len(arrays.close)), 2, dtype=np.int8)


def test_a_strategy_sweep_hook_is_checked_like_generate_signals() -> None:
    data = random_walk_ohlcv(500, seed=7)
    evaluate = sweep_evaluator(Broken, data, ohlcv_arrays(data), [{"fast": 2, "slow": 9}])
    with pytest.raises(ValueError, match="returned 2 at bar 0"):
        evaluate([{"fast": 2, "slow": 9}])


def test_sweep_rows_equal_run_backtest_metrics_exactly() -> None:
    data = random_walk_ohlcv(8_000, seed=6)
    grid = {"fast": [2, 5, 9], "slow": [20, 33]}
    options = {"fee": 0.001, "slippage": 0.0002, "allow_short": True}
    for n_jobs in (1, 2):
        result = grid_search(data, "sma_crossover", grid, n_jobs=n_jobs, **options)
        for row in result.results.to_dict("records"):
            params = {"fast": int(row["fast"]), "slow": int(row["slow"])}
            metrics = run_backtest(data, SMACrossover, params, **options).metrics
            for name, value in metrics.items():
                got = row[name]
                assert got == value or (math.isnan(got) and math.isnan(value)), (params, name)
