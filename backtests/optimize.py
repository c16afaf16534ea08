"""Parameter sweeps: grid search and random search over a strategy's parameter schema (joblib,
never Django).

The search space comes from the strategy's schema: ``strategy.search_space(grid)`` gives the
values per parameter (each parameter's ``Parameter.grid`` unless ``grid`` lists its values, so a
parameter left out of ``grid`` takes its default grid; pass ``[value]`` to hold it fixed). Every
combination is validated with ``clean_parameters``; invalid ones (``fast >= slow``, ...) are
skipped and reported with the reason, never fatal.

Memory
------
A sweep keeps one small row of numbers per combination and nothing else: no equity curve, no
trades frame. The OHLCV data is written once per sweep to read-only memory-mapped files
(``parallel.shared_arrays``, in ``/dev/shm`` when there is one) and each chunk of combinations
carries only their names: every worker maps the same pages, nothing is copied per combination
or per chunk. Combinations are produced lazily and dispatched in chunks; a worker evaluates its
chunk one combination at a time and returns only the metric rows (``sweep_chunk``), which the
parent turns into a compact table at once. Peak memory is therefore one backtest per worker
plus the result table (a few hundred bytes per combination).

``sweep_chunk`` is also the unit of the Celery fan-out: a task per chunk of combinations, on any
machine, returns the same rows.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, effective_n_jobs

from backtests.engine import EngineOptions, batch_metrics
from backtests.metrics import METRIC_NAMES, bars_per_year
from backtests.parallel import frame_arrays, frame_from_arrays, resolve_strategy, shared_arrays
from strategies.base import (
    BaseStrategy,
    OHLCVArrays,
    StrategyParameterError,
    ohlcv_arrays,
    sweep_evaluator,
    validate_ohlcv,
)

__all__ = [
    "MINIMISED",
    "SweepResult",
    "grid_combinations",
    "grid_search",
    "random_combinations",
    "random_search",
    "rank",
    "sweep",
    "sweep_chunk",
]

#: Metrics where lower is better; every other objective is maximised.
MINIMISED = frozenset({"max_drawdown", "max_drawdown_duration"})

# Upper bound on combinations per chunk: small enough to balance the workers, large enough that
# the data is sent rarely.
_MAX_CHUNK = 256
# Combinations simulated per kernel call, and the most memory their signals may take.
_BATCH = 32
_BATCH_BYTES = 8 * 2**20


@dataclass
class SweepResult:
    """A sweep's outcome.

    ``results``: one row per evaluated combination (parameter columns, then ``METRIC_NAMES``),
    sorted by ``objective`` (best first, NaN last, ties in evaluation order) with a fresh
    0-based index. ``skipped``: the parameter columns plus ``reason`` for each combination the
    strategy refused.
    """

    results: pd.DataFrame
    skipped: pd.DataFrame
    objective: str
    strategy: str
    parameter_names: tuple[str, ...]

    @property
    def best(self) -> dict[str, Any]:
        """Parameters of the best row (``ValueError`` when nothing was evaluated)."""
        if self.results.empty:
            raise ValueError("the sweep evaluated no valid combination")
        # Column by column: a row of mixed dtypes would turn int parameters into floats.
        return {name: _native(self.results[name].iloc[0]) for name in self.parameter_names}


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_objective(objective: str) -> None:
    if objective not in METRIC_NAMES:
        raise ValueError(f"objective must be one of {', '.join(METRIC_NAMES)}, got {objective!r}")


def rank(results: pd.DataFrame, objective: str) -> pd.DataFrame:
    """``results`` sorted by ``objective``: descending (ascending for ``MINIMISED``), NaN last,
    stable (ties keep their order), reindexed from 0."""
    _check_objective(objective)
    ordered = results.sort_values(
        objective,
        ascending=objective in MINIMISED,
        na_position="last",
        kind="mergesort",
    )
    return ordered.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Combinations
# ---------------------------------------------------------------------------------------------


def _validated(
    strategy: type[BaseStrategy], combos: Iterable[dict[str, Any]], skipped: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Cleaned combinations; refused ones are appended to ``skipped`` with their reason."""
    for combo in combos:
        try:
            yield strategy.clean_parameters(combo)
        except StrategyParameterError as exc:
            skipped.append({**combo, "reason": str(exc)})


def grid_combinations(space: Mapping[str, Sequence]) -> Iterator[dict[str, Any]]:
    """Every combination of ``space`` (name -> values), in ``itertools.product`` order, lazily."""
    names = list(space)
    for values in itertools.product(*(space[name] for name in names)):
        yield dict(zip(names, values, strict=True))


def random_combinations(
    space: Mapping[str, Sequence], n_iter: int, seed: int | None
) -> list[dict[str, Any]]:
    """``min(n_iter, size of the grid)`` distinct combinations of ``space`` drawn uniformly
    without replacement (``numpy.random.default_rng(seed)``); same seed, same draws."""
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    names = list(space)
    sizes = [len(space[name]) for name in names]
    total = math.prod(sizes)
    rng = np.random.default_rng(seed)
    count = min(n_iter, total)
    if total <= 2**62:
        # Mixed-radix decoding of distinct flat positions in the product.
        flat = rng.choice(total, size=count, replace=False) if count else []
        picks = []
        for position in flat:
            rest = int(position)
            choice = []
            for size in reversed(sizes):
                rest, digit = divmod(rest, size)
                choice.append(digit)
            picks.append(tuple(reversed(choice)))
    else:  # too many to number: draw per parameter and drop repeats
        seen: set[tuple[int, ...]] = set()
        picks = []
        while len(picks) < count:
            pick = tuple(int(rng.integers(size)) for size in sizes)
            if pick not in seen:
                seen.add(pick)
                picks.append(pick)
    return [
        {name: space[name][digit] for name, digit in zip(names, pick, strict=True)}
        for pick in picks
    ]


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


class _SweepData(NamedTuple):
    """A sweep's data, validated once: the frame, its arrays and prices, its bars per year."""

    frame: pd.DataFrame
    arrays: OHLCVArrays
    prices: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    periods: float


def _sweep_data(data_arrays: Mapping[str, np.ndarray]) -> _SweepData:
    frame = validate_ohlcv(frame_from_arrays(data_arrays))
    arrays = ohlcv_arrays(frame)
    prices = (arrays.open, arrays.high, arrays.low, arrays.close)
    return _SweepData(frame, arrays, prices, bars_per_year(frame.index))


def sweep_chunk(
    data_arrays: Mapping[str, np.ndarray],
    strategy: str | type[BaseStrategy],
    combos: Sequence[Mapping[str, Any]],
    engine_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a list of parameter combinations on one data set; one metric row each.

    ``data_arrays``: ``backtests.parallel.frame_arrays(frame)`` (``time`` datetime64 UTC values
    and the float64 ``open high low close volume``). ``strategy``: a registered name or a
    class. ``combos``: parameter dicts; each is cleaned again here and an invalid one raises
    ``StrategyParameterError`` (the sweep functions send valid ones only). ``engine_kwargs``:
    ``run_backtest``'s engine options. Returns ``[{**parameters, **metrics}, ...]`` in ``combos``
    order, the parameters cleaned (defaults filled in), the metrics those of
    ``backtests.metrics.compute_metrics``. Only numbers and parameter values are returned.
    """
    return _evaluate(_sweep_data(data_arrays), resolve_strategy(strategy), combos, engine_kwargs)


def _evaluate(
    data: _SweepData,
    cls: type[BaseStrategy],
    combos: Sequence[Mapping[str, Any]],
    engine_kwargs: Mapping[str, Any] | None = None,
    *,
    cleaned: bool = False,
) -> list[dict[str, Any]]:
    """``sweep_chunk`` on data validated once (a sweep in threads shares it across chunks);
    ``cleaned``: the combinations were cleaned already (the sweep functions clean them)."""
    options = EngineOptions.from_kwargs(engine_kwargs)
    if not cleaned:
        combos = [cls.clean_parameters(combo) for combo in combos]
    cleaned = list(combos)
    for params in cleaned[:1]:
        clash = set(params) & set(METRIC_NAMES)
        if clash:
            raise ValueError(f"parameter names {sorted(clash)} clash with metric names")
    # Per combination only the signals and the simulation run; what the combinations share (a
    # strategy's signals_for_sweep) is computed once per chunk.
    signals_of = sweep_evaluator(cls, data.frame, data.arrays, cleaned)
    rows = []
    n = len(data.frame)
    # Batches of combinations: their signals side by side, then one simulation call for the
    # batch that runs without the GIL (the threads of a sweep overlap), Python only for names.
    batch = max(1, min(_BATCH, _BATCH_BYTES // max(n, 1)))
    for start in range(0, len(cleaned), batch):
        group = cleaned[start : start + batch]
        signals = signals_of(group)  # int8, one row per combination (checked)
        metrics = batch_metrics(data.prices, signals, options, data.periods)
        rows.extend({**params, **values} for params, values in zip(group, metrics, strict=True))
    return rows


def _in_threads(
    fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    chunks: Iterator[list[dict[str, Any]]],
    workers: int,
) -> Iterator[list[dict[str, Any]]]:
    """``fn(chunk)`` for each chunk, in order, on ``workers`` threads (in this thread when 1).
    At most two chunks per thread are in flight, so the combinations are still produced
    lazily and memory does not grow with their number."""
    if workers == 1:
        yield from map(fn, chunks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _table(rows: list[dict[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    """Rows as a compact frame: parameter columns then ``METRIC_NAMES``, numbers as float64."""
    columns = {name: [row[name] for row in rows] for name in names}
    for metric in METRIC_NAMES:
        columns[metric] = np.fromiter((row[metric] for row in rows), np.float64, len(rows))
    return pd.DataFrame(columns)


def sweep(
    data: pd.DataFrame,
    strategy: str | type[BaseStrategy],
    combos: Iterable[Mapping[str, Any]],
    *,
    n_jobs: int = 1,
    objective: str = "sharpe",
    chunk_size: int | None = None,
    expected: int | None = None,
    backend: str | None = None,
    **engine_kwargs: Any,
) -> SweepResult:
    """Evaluate ``combos`` (validated lazily; refused ones skipped and reported) in chunks over
    ``n_jobs`` joblib workers and rank the rows by ``objective``.

    ``chunk_size`` defaults to about two chunks per thread, four per worker process (at most
    256 combinations);
    ``expected`` (the number of combinations, if known) sizes them. ``grid_search`` and
    ``random_search`` are the usual entry points.
    """
    _check_objective(objective)
    cls = resolve_strategy(strategy)
    options = EngineOptions.from_kwargs(engine_kwargs)
    frame = validate_ohlcv(data)
    names = tuple(spec.name for spec in cls.parameter_specs)
    workers = effective_n_jobs(n_jobs)
    # A strategy whose kernels release the GIL runs in threads: one copy of the data, no worker
    # start-up. Otherwise worker processes share one memory-mapped copy of the arrays.
    if backend is None and workers > 1 and getattr(cls, "releases_gil", False):
        backend = "threading"
    in_process = workers == 1 or backend == "threading"
    if chunk_size is None:
        # Threads take chunks as they free up, and a chunk repeats the work its combinations
        # share (signals_for_sweep): two per thread. Processes: four per worker, to balance.
        per_worker = math.ceil((expected or _MAX_CHUNK * workers) / (4 * workers))
        if in_process:
            per_worker = math.ceil((expected or _MAX_CHUNK * workers) / (2 * workers))
        chunk_size = max(1, min(_MAX_CHUNK, per_worker))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    skipped: list[dict[str, Any]] = []
    valid = _validated(cls, (dict(c) for c in combos), skipped)
    sharing = contextlib.nullcontext if in_process else shared_arrays
    with sharing(frame_arrays(frame)) as arrays:
        if in_process:
            # One validated copy for every chunk; threads of our own (a joblib threading pool
            # costs ~20 ms to start, more than a 100-combination sweep takes).
            data = _sweep_data(arrays)
            evaluate = functools.partial(
                _evaluate, data, cls, engine_kwargs=options.as_dict(), cleaned=True
            )
            done = _in_threads(evaluate, _chunks(valid, chunk_size), workers)
        else:
            tasks = (
                delayed(sweep_chunk)(arrays, cls, chunk, options.as_dict())
                for chunk in _chunks(valid, chunk_size)
            )
            done = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(tasks)
        tables = [_table(rows, names) for rows in done]
    if tables:
        results = pd.concat(tables, ignore_index=True)
    else:
        results = _table([], names)
    skipped_frame = pd.DataFrame(skipped, columns=[*names, "reason"])
    return SweepResult(
        results=rank(results, objective),
        skipped=skipped_frame,
        objective=objective,
        strategy=cls.name or cls.__name__,
        parameter_names=names,
    )


def grid_search(
    data: pd.DataFrame,
    strategy: str | type[BaseStrategy],
    grid: Mapping[str, Sequence] | None = None,
    *,
    n_jobs: int = 1,
    objective: str = "sharpe",
    steps: Mapping[str, float] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    **engine_kwargs: Any,
) -> SweepResult:
    """Backtest every combination of the search space and rank them by ``objective``.

    ``grid``: values per parameter (``strategy.search_space(grid, steps=steps)``: a parameter
    left out takes its schema grid; give ``[value]`` to hold one fixed). ``objective``: a metric
    name (``METRIC_NAMES``), maximised except ``MINIMISED``. ``engine_kwargs``: ``run_backtest``'s
    engine options, the same for every combination. Values outside a parameter's bounds raise
    ``StrategyParameterError`` at once; combinations the strategy refuses are skipped and
    reported in ``SweepResult.skipped``.
    """
    cls = resolve_strategy(strategy)
    space = cls.search_space(grid, steps=steps)
    return sweep(
        data,
        cls,
        grid_combinations(space),
        n_jobs=n_jobs,
        objective=objective,
        chunk_size=chunk_size,
        expected=math.prod(len(values) for values in space.values()),
        backend=backend,
        **engine_kwargs,
    )


def random_search(
    data: pd.DataFrame,
    strategy: str | type[BaseStrategy],
    space: Mapping[str, Sequence] | None = None,
    n_iter: int = 100,
    *,
    seed: int | None = 0,
    n_jobs: int = 1,
    objective: str = "sharpe",
    steps: Mapping[str, float] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    **engine_kwargs: Any,
) -> SweepResult:
    """Backtest ``n_iter`` distinct random combinations of the search space; rank them.

    The space is ``strategy.search_space(space, steps=steps)``, as for ``grid_search``. The draws
    are uniform over the grid without replacement (all of it when it has at most ``n_iter``
    combinations), reproducible with ``seed``. A draw the strategy refuses is skipped and
    reported, not replaced, so ``results`` may hold fewer than ``n_iter`` rows.
    """
    cls = resolve_strategy(strategy)
    values = cls.search_space(space, steps=steps)
    combos = random_combinations(values, n_iter, seed)
    return sweep(
        data,
        cls,
        combos,
        n_jobs=n_jobs,
        objective=objective,
        chunk_size=chunk_size,
        expected=len(combos),
        backend=backend,
        **engine_kwargs,
    )
