"""Parameter sweeps: grid and random search over the schema, invalid combinations skipped and
reported, ranking, determinism, and memory that does not grow per combination."""

from __future__ import annotations

import gc
import math
import tracemalloc

import joblib
import numpy as np
import pandas as pd
import pytest

from backtests import optimize
from backtests.engine import run_backtest
from backtests.metrics import METRIC_NAMES
from backtests.optimize import (
    grid_search,
    random_combinations,
    random_search,
    rank,
    sweep_chunk,
)
from backtests.parallel import frame_arrays
from strategies.base import StrategyParameterError
from strategies.builtin import SMACrossover
from strategies.lookahead import random_walk_ohlcv

GRID = {"fast": [2, 5, 10, 20], "slow": [5, 10, 20, 40]}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return random_walk_ohlcv(3_000, seed=8, volatility=4e-3)


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_grid_search_skips_invalid_combinations_and_reports_them(data) -> None:
    sweep = grid_search(data, "sma_crossover", GRID, n_jobs=1, fee=0.0005)
    pairs = {(f, s) for f in GRID["fast"] for s in GRID["slow"]}
    valid = {(f, s) for f, s in pairs if f < s}
    assert set(zip(sweep.results["fast"], sweep.results["slow"], strict=True)) == valid
    assert len(sweep.results) == len(valid) == 10
    skipped = set(zip(sweep.skipped["fast"], sweep.skipped["slow"], strict=True))
    assert skipped == pairs - valid
    assert sweep.skipped["reason"].str.contains("must be less than slow").all()
    assert list(sweep.results.columns) == ["fast", "slow", *METRIC_NAMES]
    assert sweep.results["fast"].dtype == np.int64
    assert sweep.strategy == "sma_crossover"


def test_grid_search_rows_are_the_backtest_metrics_sorted_by_objective(data) -> None:
    sweep = grid_search(data, SMACrossover, GRID, objective="sharpe", allow_short=True)
    sharpe = sweep.results["sharpe"].to_numpy()
    assert (np.diff(sharpe[~np.isnan(sharpe)]) <= 0).all()
    for row in sweep.results.head(3).itertuples(index=False):
        params = {"fast": row.fast, "slow": row.slow}
        expected = run_backtest(data, SMACrossover, params, allow_short=True).metrics
        for name in METRIC_NAMES:
            assert same(getattr(row, name), expected[name]), name
    assert sweep.best == {"fast": sweep.results["fast"][0], "slow": sweep.results["slow"][0]}
    assert isinstance(sweep.best["fast"], int)

    lowest_drawdown = grid_search(data, SMACrossover, GRID, objective="max_drawdown")
    drawdowns = lowest_drawdown.results["max_drawdown"].to_numpy()
    assert (np.diff(drawdowns) >= 0).all()


def test_grid_search_with_the_fee_in_base_equals_the_backtests(data) -> None:
    """The sweep's kernel gets ``fee_in_base`` too: each row is ``run_backtest``'s metrics with
    the option, and not those without it."""
    sweep = grid_search(data, SMACrossover, GRID, objective="sharpe", fee=0.003, fee_in_base=True)
    plain = grid_search(data, SMACrossover, GRID, objective="sharpe", fee=0.003)
    plain_final = {(r.fast, r.slow): r.final_equity for r in plain.results.itertuples()}
    for row in sweep.results.itertuples(index=False):
        params = {"fast": row.fast, "slow": row.slow}
        expected = run_backtest(data, SMACrossover, params, fee=0.003, fee_in_base=True).metrics
        for name in METRIC_NAMES:
            assert same(getattr(row, name), expected[name]), name
        if row.n_trades or row.open_trades:
            assert row.final_equity != plain_final[(row.fast, row.slow)]


def test_rank_puts_nan_last_and_keeps_ties_in_order() -> None:
    table = pd.DataFrame({"k": [1, 2, 3, 4, 5], "sharpe": [np.nan, 1.0, 2.0, 1.0, -math.inf]})
    assert rank(table, "sharpe")["k"].tolist() == [3, 2, 4, 5, 1]
    with pytest.raises(ValueError, match="objective"):
        rank(table, "sharp")


def test_sweep_in_worker_processes_equals_in_process(data) -> None:
    one = grid_search(data, "sma_crossover", GRID, n_jobs=1, chunk_size=3)
    two = grid_search(data, "sma_crossover", GRID, n_jobs=2, chunk_size=2, backend="loky")
    pd.testing.assert_frame_equal(one.results, two.results, check_exact=True)


def test_sweep_of_a_nogil_strategy_runs_in_threads_and_equals_in_process(data, monkeypatch) -> None:
    pools = []
    real_pool = optimize.ThreadPoolExecutor

    def spy_pool(*args, **kwargs):
        pools.append(kwargs.get("max_workers"))
        return real_pool(*args, **kwargs)

    def no_processes(self, *args, **kwargs):
        raise AssertionError("a nogil strategy's sweep must not start joblib workers")

    monkeypatch.setattr(optimize, "ThreadPoolExecutor", spy_pool)
    monkeypatch.setattr(joblib.Parallel, "__init__", no_processes)
    one = grid_search(data, "sma_crossover", GRID, n_jobs=1, chunk_size=3)
    assert pools == []  # one worker: in this thread
    threads = grid_search(data, "sma_crossover", GRID, n_jobs=2, chunk_size=2)
    assert pools == [2]  # SMACrossover.releases_gil: two threads of this process
    pd.testing.assert_frame_equal(one.results, threads.results, check_exact=True)


def test_grid_search_uses_the_schema_for_parameters_left_out(data) -> None:
    sweep = grid_search(data, "donchian_breakout", n_jobs=1, steps={"n": 250})
    # Donchian n: 1..1000 step 250 -> the multiples 250, 500, 750, 1000 (1 is no multiple).
    assert sorted(sweep.results["n"]) == [250, 500, 750, 1000]
    with pytest.raises(StrategyParameterError, match="fast"):
        grid_search(data, "sma_crossover", {"fast": [0, 5]})  # outside the bounds: an error
    with pytest.raises(ValueError, match="objective"):
        grid_search(data, "sma_crossover", GRID, objective="profit")


def test_random_search_is_deterministic_with_a_seed(data) -> None:
    space = {"fast": list(range(2, 30, 2)), "slow": list(range(10, 60, 5))}
    first = random_search(data, "sma_crossover", space, 12, seed=7)
    again = random_search(data, "sma_crossover", space, 12, seed=7)
    other = random_search(data, "sma_crossover", space, 12, seed=8)
    pd.testing.assert_frame_equal(first.results, again.results, check_exact=True)
    pd.testing.assert_frame_equal(first.skipped, again.skipped)
    drawn = set(zip(first.results["fast"], first.results["slow"], strict=True))
    drawn |= set(zip(first.skipped["fast"], first.skipped["slow"], strict=True))
    assert len(drawn) == 12  # distinct draws; refused ones reported, not replaced
    assert all(f in space["fast"] and s in space["slow"] for f, s in drawn)
    assert set(zip(other.results["fast"], other.results["slow"], strict=True)) != drawn
    assert (first.results["fast"] < first.results["slow"]).all()


def test_random_combinations_cover_small_spaces_and_are_distinct() -> None:
    space = {"a": [1, 2, 3], "b": ["x", "y"]}
    everything = random_combinations(space, 50, seed=1)
    assert len(everything) == 6
    assert {(c["a"], c["b"]) for c in everything} == {(a, b) for a in (1, 2, 3) for b in "xy"}
    assert random_combinations(space, 4, seed=1) == random_combinations(space, 4, seed=1)
    huge = {f"p{k}": list(range(100)) for k in range(12)}  # 1e24 combinations
    picks = random_combinations(huge, 5, seed=2)
    assert len({tuple(p.values()) for p in picks}) == 5


def test_sweep_chunk_returns_metric_rows_only(data) -> None:
    arrays = frame_arrays(data)
    rows = sweep_chunk(arrays, "sma_crossover", [{"fast": 3, "slow": 9}, {"fast": 4}], {})
    assert [(r["fast"], r["slow"]) for r in rows] == [(3, 9), (4, 30)]
    for row in rows:
        assert set(row) == {"fast", "slow", *METRIC_NAMES}
        assert all(isinstance(v, int | float) for v in row.values())
    expected = run_backtest(data, SMACrossover, {"fast": 3, "slow": 9}).metrics
    assert all(same(rows[0][k], expected[k]) for k in METRIC_NAMES)
    with pytest.raises(StrategyParameterError):
        sweep_chunk(arrays, "sma_crossover", [{"fast": 9, "slow": 3}], {})


def test_sweep_results_hold_no_arrays(data) -> None:
    sweep = grid_search(data, "sma_crossover", GRID)
    for column in sweep.results.columns:
        values = sweep.results[column]
        assert values.dtype != object or all(np.ndim(v) == 0 for v in values), column
    assert sweep.results.memory_usage(deep=True).sum() < 200 * len(sweep.results)


def _peak_of_sweep(data: pd.DataFrame, slow: list[int]) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        sweep = grid_search(data, "sma_crossover", {"fast": list(range(1, 41)), "slow": slow})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, len(sweep.results)


def test_sweep_memory_does_not_grow_per_combination() -> None:
    """2,000 combinations peak at about the memory of 200: one backtest at a time plus a table of
    numbers. Each extra combination may add its row (well under 1 kB), never a curve (one equity
    series of these 20,000 bars alone is 160 kB)."""
    data = random_walk_ohlcv(20_000, seed=3)
    _peak_of_sweep(data, [41])  # warm-up: first-call allocations are not the sweep's
    small_peak, small = _peak_of_sweep(data, list(range(41, 46)))
    large_peak, large = _peak_of_sweep(data, list(range(41, 91)))
    assert (small, large) == (200, 2_000)
    per_combination = (large_peak - small_peak) / (large - small)
    assert per_combination < 1_024, (small_peak, large_peak)
    assert large_peak < 2 * small_peak, (small_peak, large_peak)
