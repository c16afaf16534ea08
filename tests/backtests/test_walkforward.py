"""Walk-forward optimisation: window bounds, in-sample choice, out-of-sample stitching with the
capital carried from window to window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtests.engine import EngineOptions, simulate
from backtests.metrics import METRIC_NAMES
from backtests.optimize import grid_search
from backtests.walkforward import walk_forward, window_bounds
from strategies.builtin import SMACrossover
from strategies.lookahead import random_walk_ohlcv

GRID = {"fast": [3, 5, 8], "slow": [12, 20]}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return random_walk_ohlcv(2_600, seed=4, volatility=4e-3)


@pytest.fixture(scope="module")
def result(data):
    return walk_forward(data, "sma_crossover", GRID, train_bars=800, test_bars=400, fee=0.0005)


def test_window_bounds() -> None:
    assert window_bounds(2_600, 800, 400) == [
        (0, 800, 1_200),
        (400, 1_200, 1_600),
        (800, 1_600, 2_000),
        (1_200, 2_000, 2_400),
    ]
    assert window_bounds(1_000, 500, 100, 300) == [(0, 500, 600), (300, 800, 900)]
    assert window_bounds(100, 80, 30) == []
    with pytest.raises(ValueError, match="step_bars"):
        window_bounds(1_000, 500, 100, 50)
    with pytest.raises(ValueError, match="test_bars"):
        window_bounds(1_000, 500, 0)


def test_walk_forward_stitches_the_test_windows(data, result) -> None:
    windows = result.windows
    assert windows["window"].tolist() == [0, 1, 2, 3]
    assert len(result.equity) == 4 * 400 == (windows["test_end"] - windows["test_start"]).sum()
    expected_index = np.concatenate(
        [np.arange(a, b) for a, b in windows[["test_start", "test_end"]].values]
    )
    assert result.equity.index.equals(data.index[expected_index])
    assert windows["test_first"].tolist() == list(data.index[windows["test_start"]])
    assert {f"is_{m}" for m in METRIC_NAMES} | {f"oos_{m}" for m in METRIC_NAMES} <= set(windows)
    assert result.metrics["final_equity"] == result.equity.iloc[-1]
    assert result.trades["window"].between(0, 3).all()
    for row in windows.itertuples():
        trades = result.trades[result.trades["window"] == row.window]
        assert trades["entry_bar"].between(row.test_start, row.test_end - 1).all()
        assert trades["exit_bar"].between(row.test_start, row.test_end - 1).all()
        assert row.oos_final_equity == result.equity.iloc[(row.window + 1) * 400 - 1]


def test_walk_forward_carries_capital_from_window_to_window(result) -> None:
    equity = result.equity.to_numpy()
    starts = np.arange(400, len(equity), 400)
    # Every window ends flat (its open position closed at its last close) and starts flat with
    # that money: with next-open fills nothing can fill on a window's first bar.
    assert (equity[starts] == equity[starts - 1]).all()
    assert result.windows["oos_open_trades"].eq(0).all()
    assert not (result.trades["exit_reason"] == "open").any()
    # Window returns compound into the stitched total return.
    growth = np.prod(1 + result.windows["oos_total_return"].to_numpy())
    assert result.metrics["total_return"] == pytest.approx(growth - 1, rel=1e-9)
    assert result.windows["oos_total_return"].iloc[0] == pytest.approx(equity[399] / 10_000 - 1)


def test_walk_forward_chooses_the_in_sample_best(data, result) -> None:
    for row in result.windows.itertuples():
        train = data.iloc[row.train_start : row.train_end]
        best = grid_search(train, "sma_crossover", GRID, fee=0.0005)
        assert row.parameters == best.best == {"fast": row.fast, "slow": row.slow}
        assert row.is_sharpe == best.results["sharpe"].iloc[0]


def test_walk_forward_out_of_sample_uses_history_for_the_warm_up(data, result) -> None:
    """Each test window's equity is what its parameters give on its bars, with signals computed
    over the preceding history and the previous window's money; a window computed alone would
    lose its first ``slow`` bars to the warm-up."""
    equity = result.equity.to_numpy()
    early_signals = 0
    for row in result.windows.itertuples():
        start, end = row.test_start, row.test_end
        signals = SMACrossover.generate_signals(data.iloc[:end], row.parameters)[start:]
        cash = 10_000.0 if row.window == 0 else equity[row.window * 400 - 1]
        options = EngineOptions(cash=cash, fee=0.0005, close_at_end=True)
        prices = (data[c].to_numpy()[start:end] for c in ("open", "high", "low", "close"))
        expected = simulate(*prices, signals, options=options)
        assert np.array_equal(equity[row.window * 400 : (row.window + 1) * 400], expected.equity)
        early_signals += np.count_nonzero(signals[: row.slow])
    assert early_signals > 0  # the history mattered somewhere


def test_walk_forward_simulates_with_the_fee_in_base(data) -> None:
    """``fee_in_base`` reaches both phases: the in-sample sweep and the out-of-sample
    simulation of each window."""
    result = walk_forward(data, "sma_crossover", GRID, train_bars=800, test_bars=400, fee=0.003,
                          fee_in_base=True)  # fmt: skip
    equity = result.equity.to_numpy()
    for row in result.windows.itertuples():
        train = data.iloc[row.train_start : row.train_end]
        best = grid_search(train, "sma_crossover", GRID, fee=0.003, fee_in_base=True)
        assert row.parameters == best.best and row.is_sharpe == best.results["sharpe"].iloc[0]
        start, end = row.test_start, row.test_end
        signals = SMACrossover.generate_signals(data.iloc[:end], row.parameters)[start:]
        cash = 10_000.0 if row.window == 0 else equity[row.window * 400 - 1]
        prices = [data[c].to_numpy()[start:end] for c in ("open", "high", "low", "close")]
        options = {"cash": cash, "fee": 0.003, "close_at_end": True}
        expected = simulate(*prices, signals, options=EngineOptions(**options, fee_in_base=True))
        window = equity[row.window * 400 : (row.window + 1) * 400]
        assert np.array_equal(window, expected.equity)
        if expected.trades.count:
            assert not np.array_equal(window, simulate(*prices, signals, options=options).equity)


def test_walk_forward_refuses_windows_that_do_not_fit(data) -> None:
    with pytest.raises(ValueError, match="no walk-forward window"):
        walk_forward(data, "sma_crossover", GRID, train_bars=2_000, test_bars=700)
    with pytest.raises(ValueError, match="step_bars"):
        walk_forward(data, "sma_crossover", GRID, train_bars=500, test_bars=200, step_bars=100)
