"""Walk-forward optimisation: optimise on a rolling in-sample window, trade the winner on the
out-of-sample window after it, and stitch the out-of-sample results together (joblib, never
Django).

Windows
-------
Window ``w`` trains on bars ``[s, s + train_bars)`` and tests on ``[s + train_bars, s + train_bars
+ test_bars)`` with ``s = w * step_bars`` (``step_bars`` defaults to ``test_bars``: the test
windows tile the data). Windows are generated while a full test window fits; bars after the last
one are not traded. ``step_bars`` may exceed ``test_bars`` (gaps between test windows) but not
fall short of it (the test windows would overlap and the stitched equity would count bars twice).

In sample
    ``grid_search`` on the training bars alone, with the engine options given; the best row by
    ``objective`` (NaN last) picks the parameters; its metrics are the in-sample metrics.

Out of sample
    The chosen strategy's signals are computed with ``lookback(parameters) - 1`` bars of history
    before the test window (past bars, so no lookahead; ``backtests.parallel`` explains why that
    reproduces the full-history signals), and only the test bars are traded. Each test window
    starts flat with the final equity of the previous one (the first with ``cash``): capital
    continues. A position still open at the end of a test window is closed at the window's last
    close (fee and slippage charged, ``exit_reason`` "end"), since the next window may trade other
    parameters. The stitched equity therefore has one value per test bar: its length is the
    number of windows times ``test_bars``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backtests.engine import (
    EngineOptions,
    build_result,
    simulate,
    strategy_signals,
)
from backtests.metrics import METRIC_NAMES, bars_per_year, compute_metrics
from backtests.optimize import grid_search
from backtests.parallel import resolve_strategy
from strategies.base import BaseStrategy, validate_ohlcv

__all__ = ["WalkForwardResult", "walk_forward", "window_bounds"]


@dataclass
class WalkForwardResult:
    """A walk-forward run.

    ``windows``: one row per window: ``window``, ``train_start``/``train_end``/``test_start``/
    ``test_end`` (bar positions, ends exclusive), ``test_first``/``test_last`` (close times of
    the first and last test bar), the chosen parameters (one column each, and all of them as a
    dict in ``parameters``), the in-sample metrics prefixed ``is_`` and the out-of-sample ones
    prefixed ``oos_``. ``equity``: the stitched out-of-sample equity (one value per test bar).
    ``trades``: the out-of-sample trades (``BacktestResult.trades`` columns with global bar
    positions, plus ``window``). ``metrics``: ``compute_metrics`` of the stitched equity and
    trades.
    """

    windows: pd.DataFrame
    equity: pd.Series
    trades: pd.DataFrame
    metrics: dict[str, float]
    objective: str
    strategy: str


def window_bounds(
    n: int, train_bars: int, test_bars: int, step_bars: int | None = None
) -> list[tuple[int, int, int]]:
    """``(train_start, test_start, test_end)`` of every window over ``n`` bars (module
    docstring); ``ValueError`` for sizes below 1 or a step shorter than the test window."""
    step = test_bars if step_bars is None else step_bars
    for name, value in (("train_bars", train_bars), ("test_bars", test_bars), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if step < test_bars:
        raise ValueError(
            f"step_bars ({step}) must be >= test_bars ({test_bars}): overlapping test windows "
            "would trade the same bars twice"
        )
    bounds = []
    start = 0
    while start + train_bars + test_bars <= n:
        bounds.append((start, start + train_bars, start + train_bars + test_bars))
        start += step
    return bounds


def walk_forward(
    data: pd.DataFrame,
    strategy: str | type[BaseStrategy],
    grid: Mapping[str, Sequence] | None = None,
    *,
    train_bars: int,
    test_bars: int,
    step_bars: int | None = None,
    objective: str = "sharpe",
    n_jobs: int = 1,
    backend: str | None = None,
    **engine_kwargs: Any,
) -> WalkForwardResult:
    """Rolling in-sample optimisation (``grid_search`` with ``grid``) and out-of-sample trading
    of the winner, window after window, capital carried over (module docstring).

    ``engine_kwargs`` are ``run_backtest``'s engine options for both phases (``close_at_end`` is
    forced on out of sample). ``ValueError`` when no window fits or a training window has no
    valid combination.
    """
    cls = resolve_strategy(strategy)
    options = EngineOptions.from_kwargs(engine_kwargs)
    frame = validate_ohlcv(data)
    n = len(frame)
    bounds = window_bounds(n, train_bars, test_bars, step_bars)
    if not bounds:
        raise ValueError(
            f"no walk-forward window fits: {n} bars < train_bars + test_bars "
            f"({train_bars} + {test_bars})"
        )
    periods = bars_per_year(frame.index)
    arrays = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close")}

    rows: list[dict[str, Any]] = []
    equity_parts: list[np.ndarray] = []
    position_parts: list[np.ndarray] = []
    trade_parts: list[pd.DataFrame] = []
    pnl_parts: list[np.ndarray] = []
    fees = 0.0
    cash = options.cash
    for window, (train_start, test_start, test_end) in enumerate(bounds):
        search = grid_search(
            frame.iloc[train_start:test_start],
            cls,
            grid,
            n_jobs=n_jobs,
            objective=objective,
            backend=backend,
            **options.as_dict(),
        )
        if search.results.empty:
            raise ValueError(f"window {window}: no valid parameter combination to optimise")
        params = search.best
        in_sample = search.results.iloc[0]

        context = max(cls.lookback(params) - 1, 0)
        first = max(0, test_start - context)
        _, signals = strategy_signals(cls, frame.iloc[first:test_end], params)
        signals = signals[test_start - first :]
        oos_options = dataclasses.replace(options, cash=cash, close_at_end=True)
        simulation = simulate(
            *(values[test_start:test_end] for values in arrays.values()),
            signals,
            options=oos_options,
        )
        result = build_result(
            frame.index[test_start:test_end],
            arrays["close"][test_start:test_end],
            signals,
            simulation,
            oos_options,
            strategy=cls.name,
            parameters=params,
        )
        # Bar positions of the window's frame -> positions in the data (no open trade: closed
        # at the window's end).
        trades = result.trades.assign(
            entry_bar=result.trades["entry_bar"] + test_start,
            exit_bar=result.trades["exit_bar"] + test_start,
            window=window,
        )
        cash = float(simulation.equity[-1])
        equity_parts.append(simulation.equity)
        position_parts.append(simulation.position)
        trade_parts.append(trades)
        pnl_parts.append(simulation.trades.pnl)
        fees += float(simulation.trades.fees.sum())
        rows.append(
            {
                "window": window,
                "train_start": train_start,
                "train_end": test_start,
                "test_start": test_start,
                "test_end": test_end,
                "test_first": frame.index[test_start],
                "test_last": frame.index[test_end - 1],
                **params,
                "parameters": params,
                **{f"is_{m}": float(in_sample[m]) for m in METRIC_NAMES},
                **{f"oos_{m}": result.metrics[m] for m in METRIC_NAMES},
            }
        )

    index = frame.index[np.concatenate([np.arange(lo, hi) for _, lo, hi in bounds])]
    equity = np.concatenate(equity_parts)
    metrics = compute_metrics(
        equity,
        options.cash,
        np.concatenate(pnl_parts),
        np.concatenate(position_parts),
        periods,
        open_trades=0,
        total_fees=fees,
    )
    return WalkForwardResult(
        windows=pd.DataFrame(rows),
        equity=pd.Series(equity, index=index, name="equity"),
        trades=pd.concat(trade_parts, ignore_index=True),
        metrics=metrics,
        objective=objective,
        strategy=cls.name or cls.__name__,
    )
