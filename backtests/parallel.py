"""Backtests across processes: the seed's ``run_parallel_backtest`` (joblib, never Django).

The user's contract (``design/seed.txt``, "Backtesting Optimization")::

    run_parallel_backtest(data, strategy_params, n_jobs=4)

splits the data into batches, computes each batch's signals in parallel with joblib and
simulates the trades incrementally, batch after batch. The result is **exactly** the single-pass
``run_backtest``: same signals, same fills, same equity bit for bit.

How exactness is kept
---------------------
*Signals.* Each batch ``[start, end)`` is sent with ``lookback(parameters) - 1`` bars of history
before it (clipped at the first bar), and only the signals of its own bars are kept.
``BaseStrategy.lookback`` is the strategy's own promise of how much history reproduces the
full-history signal: ``warmup + 1`` for rules over finite windows (SMA, Bollinger, Donchian),
plus ``ema_settle_bars`` of the slowest smoothing for recursive ones (EMA, MACD, Wilder's RSI),
the point where the seed's weight has faded below double precision. It is what a live bot
fetches, and the strategy tests hold every built-in to it; a strategy with a wrong ``lookback``
would break its bots as much as this function. The batching cannot change a signal in any other
way: a strategy may not look ahead (``strategies.lookahead``), so bars after a batch are never
needed.

*Trades.* The simulation is sequential by nature (each fill depends on the cash left by the last
one), so the parent runs ``engine.simulate`` on each batch as soon as its signals arrive, in order,
handing on the simulation state (cash, position, entry, trailing extreme, the signal pending for
the next open). The kernel does the very same floating-point operations in the same order as in
one pass, so the equity and the trades are identical, not merely close.

Parallelism pays when the strategy's signals are expensive (pandas-heavy user strategies, long
series); for the numba built-ins a single ``run_backtest`` is faster than starting workers.

Strategy names are resolved here, in the parent, through ``strategies.registry`` (built-ins and
``TRADEAPP_STRATEGY_MODULES``); workers receive the class itself (pickled by reference), so a
worker needs no Django settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs

from backtests.engine import (
    BacktestResult,
    EngineOptions,
    SimulationResult,
    TradeRecords,
    build_result,
    initial_state,
    simulate,
    strategy_signals,
)
from backtests.engine import run_backtest as engine_run_backtest
from strategies.base import BaseStrategy, validate_ohlcv

__all__ = [
    "batch_signals",
    "frame_arrays",
    "frame_from_arrays",
    "resolve_strategy",
    "run_backtest",
    "run_parallel_backtest",
    "shared_arrays",
    "slice_arrays",
    "split_batches",
]

_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


def resolve_strategy(strategy: str | type[BaseStrategy]) -> type[BaseStrategy]:
    """The strategy class of a registry name (``UnknownStrategyError`` if none), or the class."""
    if isinstance(strategy, str):
        from strategies.registry import get_strategy

        return get_strategy(strategy)
    if isinstance(strategy, type) and issubclass(strategy, BaseStrategy):
        return strategy
    raise TypeError(f"strategy must be a registered name or a BaseStrategy class, got {strategy!r}")


def run_backtest(
    data: pd.DataFrame,
    strategy: str | type[BaseStrategy],
    parameters: Mapping[str, Any] | None = None,
    **engine_kwargs: Any,
) -> BacktestResult:
    """``backtests.engine.run_backtest`` with the strategy resolved here (the registry loaded)."""
    return engine_run_backtest(data, resolve_strategy(strategy), parameters, **engine_kwargs)


def frame_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A validated OHLCV frame as plain arrays: ``time`` (datetime64, UTC values, no tz) and the
    five float64 columns. The form in which data crosses to workers and to
    ``optimize.sweep_chunk``."""
    index = pd.DatetimeIndex(frame.index)
    arrays = {"time": index.tz_convert("UTC").tz_localize(None).to_numpy()}
    for name in _PRICE_COLUMNS:
        arrays[name] = np.ascontiguousarray(frame[name].to_numpy(dtype=np.float64))
    return arrays


def frame_from_arrays(arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The OHLCV frame of ``frame_arrays`` (columns share the arrays where pandas allows)."""
    index = pd.DatetimeIndex(arrays["time"]).tz_localize("UTC")
    return pd.DataFrame({name: arrays[name] for name in _PRICE_COLUMNS}, index=index, copy=False)


@contextlib.contextmanager
def shared_arrays(arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The arrays as read-only memory maps of temporary files, deleted on exit.

    joblib passes a ``numpy.memmap`` to its workers as a file name, so every task of a sweep
    opens the same pages (in ``/dev/shm`` when there is one) instead of receiving a copy; for a
    plain array joblib would hash and dump it again for each task.
    """
    shm = Path("/dev/shm")  # noqa: S108 - RAM-backed when present; tempfile's default otherwise
    folder = tempfile.mkdtemp(prefix="tradeapp-arrays-", dir=shm if shm.is_dir() else None)
    try:
        shared = {}
        for name, values in arrays.items():
            path = Path(folder) / f"{name}.npy"
            out = np.lib.format.open_memmap(path, mode="w+", dtype=values.dtype, shape=values.shape)
            out[...] = values
            out.flush()
            del out
            shared[name] = np.load(path, mmap_mode="r")
        yield shared
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def slice_arrays(arrays: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Bars ``start:stop`` of ``frame_arrays`` output (views)."""
    return {name: values[start:stop] for name, values in arrays.items()}


def split_batches(n: int, n_batches: int) -> list[tuple[int, int]]:
    """``n`` bars as at most ``n_batches`` contiguous ``(start, stop)`` ranges of near-equal
    length (none empty; no range for ``n == 0``)."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    count = min(n_batches, n)
    edges = [n * k // count for k in range(count + 1)] if count else [0]
    return [(edges[k], edges[k + 1]) for k in range(count)]


def batch_signals(
    strategy: type[BaseStrategy],
    parameters: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    keep_from: int,
) -> np.ndarray:
    """Signals of the bars ``keep_from:`` of a batch whose leading bars are history (a worker's
    job in ``run_parallel_backtest``)."""
    _, signals = strategy_signals(strategy, frame_from_arrays(arrays), parameters)
    return signals[keep_from:]


def run_parallel_backtest(
    data: pd.DataFrame,
    strategy_params: Mapping[str, Any],
    n_jobs: int = 4,
    *,
    n_batches: int | None = None,
    backend: str | None = None,
) -> BacktestResult:
    """Backtest in batches: signals in parallel (joblib), trades simulated batch after batch.

    ``strategy_params``: ``{"strategy": name or class, "parameters": {...}}`` plus any engine
    option of ``run_backtest`` (``cash``, ``fee``, ``slippage``, ``size``, ``fill``,
    ``allow_short``, ``stop_loss``, ``take_profit``, ``trailing_stop``, ``close_at_end``); an
    unknown key raises ``TypeError``. ``n_jobs`` as in joblib (-1: every core); ``n_batches``
    defaults to the number of workers; ``backend`` is joblib's (default loky processes).

    Returns exactly what ``run_backtest(data, strategy, parameters, **options)`` returns (the
    module docstring says how). Raises ``StrategyParameterError`` for bad parameters and
    ``OHLCVError`` for bad data before any worker starts.
    """
    spec = dict(strategy_params)
    if "strategy" not in spec:
        raise TypeError('strategy_params needs a "strategy" (a registered name or a class)')
    strategy = resolve_strategy(spec.pop("strategy"))
    params = strategy.clean_parameters(spec.pop("parameters", None))
    options = EngineOptions.from_kwargs(spec)
    frame = validate_ohlcv(data)
    n = len(frame)
    arrays = frame_arrays(frame)
    workers = effective_n_jobs(n_jobs)
    batches = split_batches(n, n_batches if n_batches is not None else workers)
    context = max(strategy.lookback(params) - 1, 0)

    def job(start: int, stop: int) -> Any:
        first = max(0, start - context)
        return delayed(batch_signals)(
            strategy, params, slice_arrays(arrays, first, stop), start - first
        )

    state = initial_state(options.cash)
    equity: list[np.ndarray] = []
    position: list[np.ndarray] = []
    signals: list[np.ndarray] = []
    trades: list[TradeRecords] = []
    if batches:
        parallel = Parallel(
            n_jobs=min(workers, len(batches)), backend=backend, return_as="generator"
        )
        # The generator yields in submission order while later batches are still computing.
        results = parallel(job(start, stop) for start, stop in batches)
        # close_at_end means the end of the data: only the last batch may close the position.
        between = dataclasses.replace(options, close_at_end=False)
        for (start, stop), batch in zip(batches, results, strict=True):
            simulation = simulate(
                arrays["open"][start:stop],
                arrays["high"][start:stop],
                arrays["low"][start:stop],
                arrays["close"][start:stop],
                batch,
                options=options if stop == n else between,
                state=state,
                offset=start,
            )
            state = simulation.state
            equity.append(simulation.equity)
            position.append(simulation.position)
            signals.append(batch)
            trades.append(simulation.trades)

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    combined = SimulationResult(
        equity=joined(equity, np.float64),
        position=joined(position, np.int8),
        trades=TradeRecords.concat(trades),
        state=state,
    )
    return build_result(
        frame.index,
        arrays["close"],
        joined(signals, np.int8),
        combined,
        options,
        strategy=strategy.name or strategy.__name__,
        parameters=params,
    )
