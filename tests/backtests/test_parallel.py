"""``run_parallel_backtest`` (the seed's contract) equals the single-pass backtest exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from backtests.engine import BacktestResult, run_backtest
from backtests.parallel import run_parallel_backtest, split_batches
from strategies.base import OHLCVError, StrategyParameterError
from strategies.builtin import BUILTIN_STRATEGIES
from strategies.lookahead import random_walk_ohlcv
from tests.backtests.support import Scripted

# Small periods keep the EMA look-backs (hundreds of bars) well inside the batches.
PARAMETERS = {
    "sma_crossover": {"fast": 5, "slow": 20},
    "ema_crossover": {"fast": 4, "slow": 12},
    "rsi_reversion": {"period": 6, "oversold": 35.0, "overbought": 65.0},
    "macd_crossover": {"fast": 4, "slow": 10, "signal": 5},
    "bollinger_reversion": {"n": 12, "k": 1.5},
    "donchian_breakout": {"n": 15},
}
ENGINES = [
    {},
    {"fill": "close", "fee": 0.002, "slippage": 0.001},
    {"allow_short": True, "stop_loss": 0.01, "take_profit": 0.02, "trailing_stop": 0.008},
    {"allow_short": True, "size": 0.5, "close_at_end": True},
    {"fee_in_base": True, "fee": 0.002, "size": 0.7, "trailing_stop": 0.01},
]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return random_walk_ohlcv(4_000, seed=21, volatility=4e-3)


def assert_identical(one: BacktestResult, other: BacktestResult) -> None:
    assert np.array_equal(one.equity.to_numpy(), other.equity.to_numpy())
    assert one.equity.index.equals(other.equity.index)
    assert np.array_equal(one.position.to_numpy(), other.position.to_numpy())
    assert np.array_equal(one.signals.to_numpy(), other.signals.to_numpy())
    pd.testing.assert_frame_equal(one.trades, other.trades, check_exact=True)
    assert one.metrics.keys() == other.metrics.keys()
    for key, value in one.metrics.items():
        theirs = other.metrics[key]
        assert value == theirs or (math.isnan(value) and math.isnan(theirs)), key


@pytest.mark.parametrize("name", sorted(PARAMETERS))
@pytest.mark.parametrize("engine", range(len(ENGINES)))
def test_parallel_backtest_equals_the_single_pass(data, name, engine) -> None:
    options = ENGINES[engine]
    single = run_backtest(data, BUILTIN_STRATEGIES[name], PARAMETERS[name], **options)
    assert len(single.trades) >= 10  # the data exercises the strategy
    for n_batches in (2, 5, 13):
        spec = {"strategy": name, "parameters": PARAMETERS[name], **options}
        batched = run_parallel_backtest(data, spec, n_jobs=1, n_batches=n_batches)
        assert_identical(single, batched)


def test_parallel_backtest_in_worker_processes(data) -> None:
    """Real joblib workers (loky processes), a user-style strategy class and a built-in."""
    spec = {"strategy": "ema_crossover", "parameters": {"fast": 5, "slow": 15}, "fee": 0.0005}
    single = run_backtest(data, "ema_crossover", {"fast": 5, "slow": 15}, fee=0.0005)
    assert_identical(single, run_parallel_backtest(data, spec, n_jobs=2))
    assert_identical(single, run_parallel_backtest(data, spec, n_jobs=2, n_batches=7))

    scripted = data.assign(volume=np.random.default_rng(3).choice([1.0, 2.0, 3.0], len(data)))
    expected = run_backtest(scripted, Scripted, allow_short=True)
    spec = {"strategy": Scripted, "allow_short": True}
    assert_identical(expected, run_parallel_backtest(scripted, spec, n_jobs=2, n_batches=4))


def test_parallel_backtest_with_a_pending_signal_at_a_batch_edge() -> None:
    """A signal on a batch's last bar fills at the next batch's first open."""
    data = random_walk_ohlcv(40, seed=1)
    signals = np.zeros(40)
    signals[[9, 19, 29]] = [1, -1, 1]  # the last bars of batches [0, 10), [10, 20), [20, 30)
    scripted = data.assign(volume=signals + 2)
    single = run_backtest(scripted, Scripted)
    batched = run_parallel_backtest(scripted, {"strategy": Scripted}, n_jobs=1, n_batches=4)
    assert_identical(single, batched)
    assert single.trades["entry_bar"].tolist() == [10, 30]


def test_parallel_backtest_tiny_and_empty_data() -> None:
    tiny = random_walk_ohlcv(3, seed=2)
    spec = {"strategy": "sma_crossover", "parameters": {"fast": 2, "slow": 3}}
    assert_identical(
        run_backtest(tiny, "sma_crossover", {"fast": 2, "slow": 3}),
        run_parallel_backtest(tiny, spec, n_jobs=1, n_batches=8),
    )
    empty = run_parallel_backtest(tiny.iloc[:0], spec, n_jobs=1)
    assert empty.equity.empty and empty.trades.empty


def test_parallel_backtest_refuses_bad_input_before_starting(data) -> None:
    with pytest.raises(StrategyParameterError, match="fast"):
        run_parallel_backtest(data, {"strategy": "sma_crossover", "parameters": {"fast": 30}})
    with pytest.raises(KeyError, match="no_such"):
        run_parallel_backtest(data, {"strategy": "no_such"})
    with pytest.raises(TypeError, match="unknown engine option"):
        run_parallel_backtest(data, {"strategy": "sma_crossover", "leverage": 3})
    with pytest.raises(TypeError, match="strategy"):
        run_parallel_backtest(data, {"parameters": {}})
    with pytest.raises(OHLCVError):
        run_parallel_backtest(data.tz_localize(None), {"strategy": "sma_crossover"})


def test_split_batches() -> None:
    assert split_batches(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_batches(2, 5) == [(0, 1), (1, 2)]
    assert split_batches(0, 4) == []
    with pytest.raises(ValueError):
        split_batches(10, 0)
