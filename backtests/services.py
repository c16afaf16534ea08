"""Backtest and optimisation runs: create, execute in a worker, record, cancel."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import threading
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from backtests.models import FINISHED, BacktestRun, OptimizationResult, OptimizationRun, RunStatus
from marketdata.models import Instrument
from marketdata.selectors import candles_frame
from strategies.base import BaseStrategy, StrategyParameterError
from strategies.registry import get_strategy
from tradeapp.events import publish_on_commit
from tradeapp.pause import pause_point

logger = logging.getLogger(__name__)


class RunCancelled(Exception):
    """The run was cancelled while it ran."""


class RunSuperseded(Exception):
    """Another start of the run took it over (its worker was thought lost): this one stops."""


# --- lost workers: heartbeats, attempts, the watchdog -------------------------------------------
#
# A task is acknowledged late and rejected when its pool process dies, so Celery redelivers it
# at once; but when the whole worker (or its machine) dies, or the broker loses the message, no
# one redelivers it before the visibility timeout (an hour). Every run therefore beats while it
# runs (``heartbeat_at``) and counts its starts (``attempts``); ``runs_recover_stale`` (the
# ``backtests.recover_stale`` task, on the beat schedule) requeues runs with no sign of life or,
# once their starts are used up, fails them. Each start fences the ones before it: a start
# writes only while ``attempts`` still holds its own number.

#: Tests only (``tradeapp.pause``): "<point>:<marker file>" pauses the first run reaching
#: ``point`` ("backtest", "chunk") so that a test can kill its worker there.
TEST_PAUSE_ENV = "TRADEAPP_TEST_PAUSE_BACKTEST"


def _test_pause(point: str) -> None:
    pause_point(TEST_PAUSE_ENV, point)


def stale_after() -> timedelta:
    """How long a queued or running run may go without a sign of life before the watchdog
    takes it for lost (``TRADEAPP_RUN_STALE_AFTER`` seconds, default 10 minutes)."""
    return timedelta(seconds=float(getattr(settings, "TRADEAPP_RUN_STALE_AFTER", 600)))


def max_attempts() -> int:
    """Starts a run gets before a lost worker fails it (``TRADEAPP_RUN_MAX_ATTEMPTS``)."""
    return int(getattr(settings, "TRADEAPP_RUN_MAX_ATTEMPTS", 3))


@contextmanager
def _heartbeat(
    model: type[BacktestRun | OptimizationRun], run_id: int, attempt: int | None
) -> Iterator[None]:
    """While the block runs, a thread stamps ``heartbeat_at`` every ``TRADEAPP_RUN_HEARTBEAT``
    seconds (default 30): a long simulation stays visibly alive; a killed process goes quiet."""
    interval = float(getattr(settings, "TRADEAPP_RUN_HEARTBEAT", 30))
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(interval):
                rows = model.objects.filter(pk=run_id, status=RunStatus.RUNNING)
                if attempt is not None:
                    rows = rows.filter(attempts=attempt)
                try:
                    rows.update(heartbeat_at=timezone.now())
                except DatabaseError as exc:  # a missed beat is not fatal; the next one retries
                    logger.warning("run %s: heartbeat not stored: %r", run_id, exc)
        finally:
            connections.close_all()  # this thread's own connections

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _lost_reason(run: BacktestRun | OptimizationRun, limit: int) -> str:
    since = run.heartbeat_at.isoformat() if run.heartbeat_at else "it was created"
    return (
        f"worker lost: no sign of life since {since}, after {run.attempts} start(s) "
        f"(at most {limit}); the worker was killed or the broker lost the task"
    )


# --- reproducibility ----------------------------------------------------------------------------


def data_hash(frame: pd.DataFrame) -> str:
    """sha256 of the candles a run used: close times and OHLCV values, bit for bit."""
    digest = hashlib.sha256()
    digest.update(frame.index.asi8.astype("<i8").tobytes())
    digest.update(
        np.ascontiguousarray(
            frame[["open", "high", "low", "close", "volume"]].to_numpy("<f8")
        ).tobytes()
    )
    return digest.hexdigest()


def strategy_version(cls: type[BaseStrategy]) -> str:
    """The strategy's declared ``version`` and a hash of its source code."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        source = repr(cls)
    declared = getattr(cls, "version", "")
    return f"{declared}:{hashlib.sha256(source.encode()).hexdigest()[:16]}".lstrip(":")


def engine_version() -> str:
    """Hash of the simulation engine's source: a changed engine is visible on every run."""
    from backtests import engine, metrics

    source = inspect.getsource(engine) + inspect.getsource(metrics)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{getattr(engine, 'ENGINE_VERSION', '')}:{digest}".lstrip(":")


# --- compact results ----------------------------------------------------------------------------


def pack_equity(equity: pd.Series) -> bytes:
    """Equity per bar as zlib-compressed float64 (exact; a year of 1m bars is a few MB at most)."""
    return zlib.compress(equity.to_numpy(dtype="<f8").tobytes(), 6)


def unpack_equity(
    blob: bytes | memoryview | None, index: pd.DatetimeIndex | None = None
) -> pd.Series:
    if not blob:
        return pd.Series(dtype="float64")
    values = np.frombuffer(zlib.decompress(bytes(blob)), dtype="<f8")
    return pd.Series(
        values, index=index if index is not None and len(index) == len(values) else None
    )


def pack_trades(trades: pd.DataFrame) -> bytes:
    """The trades table as compressed JSON (ISO times, NaN as null)."""
    return zlib.compress(
        trades.to_json(orient="records", date_format="iso", date_unit="ms").encode(), 6
    )


def unpack_trades(blob: bytes | memoryview | None) -> pd.DataFrame:
    if not blob:
        return pd.DataFrame()
    return pd.read_json(io.StringIO(zlib.decompress(bytes(blob)).decode()), orient="records")


# --- backtests ----------------------------------------------------------------------------------


def _progress(
    run: BacktestRun | OptimizationRun, progress: float, status: str | None = None
) -> None:
    kind = "backtests" if isinstance(run, BacktestRun) else "optimizations"
    publish_on_commit(
        f"{kind}:{run.pk}",
        {"type": "run.progress", "run_id": run.pk, "status": status or run.status,
         "progress": round(float(progress), 4)},
    )  # fmt: skip


def _validated_parameters(strategy: str, parameters: dict[str, Any]) -> dict[str, Any]:
    cls = get_strategy(strategy)  # raises UnknownStrategyError listing the available ones
    return dict(cls(parameters).parameters)  # raises StrategyParameterError naming the parameter


@transaction.atomic
def backtest_submit(*, run: BacktestRun) -> BacktestRun:
    """Validate a new (unsaved or queued) run, save it and queue it after commit."""
    run.parameters = _validated_parameters(run.strategy, run.parameters or {})
    if run.end <= run.start:
        raise ValueError("the period's end must be after its start")
    run.status = RunStatus.QUEUED
    run.save()
    transaction.on_commit(lambda: _enqueue_backtest(run.pk))
    return run


@transaction.atomic
def backtest_create(
    *,
    user: Any,
    strategy: str,
    parameters: dict[str, Any],
    instrument: Instrument,
    timeframe: str,
    start: datetime,
    end: datetime,
    enqueue: bool = True,
    **options: Any,
) -> BacktestRun:
    """Validate and store a backtest; queue it on the ``backtests`` queue after commit. Engine
    settings the engine would refuse raise ``ValidationError`` naming the field, before anything
    is stored (not a failed run later)."""
    run = BacktestRun(
        owner=user, strategy=strategy, parameters=parameters, instrument=instrument,
        timeframe=timeframe, start=start, end=end, **options,
    )  # fmt: skip
    _run_options_checked(run)
    if enqueue:
        return backtest_submit(run=run)
    run.parameters = _validated_parameters(strategy, parameters)
    run.save()
    return run


def _enqueue_backtest(run_id: int) -> None:
    from backtests.tasks import run_backtest_task

    # The id is stored before the message leaves: a start under it is the run's own (_start).
    task_id = str(uuid.uuid4())
    BacktestRun.objects.filter(pk=run_id).update(task_id=task_id, heartbeat_at=timezone.now())
    run_backtest_task.apply_async((run_id,), task_id=task_id)


def _start(
    model: type[BacktestRun | OptimizationRun], run_id: int, task_id: str | None = None
) -> BacktestRun | OptimizationRun | None:
    """Mark a run running under a new attempt number (``run.attempts``). None when it was
    cancelled or finished (a redelivered task), when it is running, alive, under another task
    message (a duplicate the watchdog sent), or when this start would exceed
    ``max_attempts()`` after starts that all lost their worker (the run is failed then).
    A redelivery of the message the run started under takes the run over: its worker died."""
    with transaction.atomic():
        run = model.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status in FINISHED:
            return None  # deleted meanwhile, or cancelled/finished (a redelivered task)
        now = timezone.now()
        if run.status == RunStatus.RUNNING:
            alive = run.heartbeat_at is not None and run.heartbeat_at > now - stale_after()
            if alive and task_id and run.task_id not in ("", SENDING, task_id):
                return None
            if run.attempts >= max_attempts():
                _mark_failed(run, _lost_reason(run, max_attempts()), now)
                return None
        run.status = RunStatus.RUNNING
        run.started_at = run.started_at or now
        run.progress = 0.0
        run.error = ""
        run.attempts += 1
        run.heartbeat_at = now
        run.task_id = task_id or run.task_id
        run.save(
            update_fields=["status", "started_at", "progress", "error", "attempts",
                           "heartbeat_at", "task_id"]
        )  # fmt: skip
        _progress(run, 0.0)
    return run


def _mark_failed(run: BacktestRun | OptimizationRun, error: str, now: datetime) -> None:
    """Fail a locked run with ``error`` (in the caller's transaction)."""
    run.status = RunStatus.FAILED
    run.error = error[:4000]
    run.finished_at = now
    run.save(update_fields=["status", "error", "finished_at"])
    _progress(run, run.progress, RunStatus.FAILED)


def _check_cancelled(model: type[BacktestRun | OptimizationRun], run_id: int) -> None:
    if model.objects.filter(pk=run_id, status=RunStatus.CANCELLED).exists():
        raise RunCancelled


def _load(run: BacktestRun | OptimizationRun) -> pd.DataFrame:
    frame = candles_frame(
        instrument_id=run.instrument_id, timeframe=run.timeframe, start=run.start, end=run.end
    )
    if frame.empty:
        raise ValueError(
            f"no {run.timeframe} candles for {run.instrument} between {run.start} and {run.end}"
        )
    return frame


def _record_data(run: BacktestRun | OptimizationRun, frame: pd.DataFrame, cls: type) -> list[str]:
    run.data_first = frame.index[0].to_pydatetime()
    run.data_last = frame.index[-1].to_pydatetime()
    run.data_bars = len(frame)
    run.data_hash = data_hash(frame)
    run.strategy_version = strategy_version(cls)
    run.engine_version = engine_version()
    return [
        "data_first",
        "data_last",
        "data_bars",
        "data_hash",
        "strategy_version",
        "engine_version",
    ]


def _fail(
    model: type[BacktestRun | OptimizationRun],
    run_id: int,
    exc: BaseException,
    attempt: int | None = None,
) -> None:
    """Fail a run with ``exc``, unless it finished meanwhile or (``attempt``) another start
    took it over."""
    with transaction.atomic():
        run = model.objects.select_for_update().get(pk=run_id)
        if run.status in FINISHED or (attempt is not None and run.attempts != attempt):
            return
        _mark_failed(run, f"{type(exc).__name__}: {exc}", timezone.now())


def backtest_execute(run_id: int, *, task_id: str | None = None) -> BacktestRun | None:
    """Run a stored backtest (in a worker): load candles, simulate, store the result.
    ``task_id``: the Celery task's id (see ``_start``)."""
    from backtests.engine import run_backtest

    run = _start(BacktestRun, run_id, task_id)
    if run is None:
        return None
    attempt = run.attempts
    try:
        with _heartbeat(BacktestRun, run_id, attempt):
            cls = get_strategy(run.strategy)
            frame = _load(run)
            fields = _record_data(run, frame, cls)
            if not BacktestRun.objects.filter(pk=run.pk, attempts=attempt).update(
                progress=0.2, heartbeat_at=timezone.now(), **{f: getattr(run, f) for f in fields}
            ):
                raise RunSuperseded
            _test_pause("backtest")
            _check_cancelled(BacktestRun, run_id)
            result = run_backtest(frame, cls, run.parameters, **run.engine_options())
        _check_cancelled(BacktestRun, run_id)
        with transaction.atomic():
            locked = BacktestRun.objects.select_for_update().get(pk=run_id)
            if locked.status == RunStatus.CANCELLED:
                raise RunCancelled
            if locked.attempts != attempt or locked.status != RunStatus.RUNNING:
                raise RunSuperseded
            locked.metrics = _json_metrics(result.metrics)
            locked.equity_blob = pack_equity(result.equity)
            locked.trades_blob = pack_trades(result.trades)
            locked.trades_count = len(result.trades)
            locked.status = RunStatus.DONE
            locked.progress = 1.0
            locked.finished_at = timezone.now()
            locked.save()
            _progress(locked, 1.0, RunStatus.DONE)
        return locked
    except (RunCancelled, RunSuperseded):
        return BacktestRun.objects.get(pk=run_id)
    except Exception as exc:
        logger.exception("backtest %s failed", run_id)
        _fail(BacktestRun, run_id, exc, attempt)
        return BacktestRun.objects.get(pk=run_id)


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return _json_value(value.item())
    if isinstance(value, pd.Timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in metrics.items()}


@transaction.atomic
def run_cancel(*, run: BacktestRun | OptimizationRun) -> bool:
    """Cancel a queued or running run; False when it had already finished."""
    model = type(run)
    locked = model.objects.select_for_update().get(pk=run.pk)
    if locked.status in FINISHED:
        return False
    locked.status = RunStatus.CANCELLED
    locked.finished_at = timezone.now()
    locked.save(update_fields=["status", "finished_at"])
    _progress(locked, locked.progress, RunStatus.CANCELLED)
    if locked.task_id:
        from tradeapp.celery import app

        transaction.on_commit(lambda: app.control.revoke(locked.task_id))
    return True


# --- optimisations ------------------------------------------------------------------------------

# Combinations per Celery chunk: big enough that a chunk's data load is small beside its work,
# small enough that every worker of the installation gets chunks.
CHUNK_SIZE = 50


def _combinations(run: OptimizationRun) -> list[dict[str, Any]]:
    """The valid combinations of a grid or random run (invalid ones such as fast >= slow are
    left out by the strategy's rules)."""
    from backtests.optimize import random_combinations

    cls = get_strategy(run.strategy)
    space = run.space or None
    if run.method == OptimizationRun.Method.RANDOM:
        full = cls.search_space(space)
        valid = []
        for combo in random_combinations(full, run.n_iter, run.seed):
            try:
                valid.append(cls.clean_parameters(combo))
            except StrategyParameterError:
                continue
        return valid
    return list(cls.parameter_grid(space))


@transaction.atomic
def optimization_submit(*, run: OptimizationRun, enqueue: bool = True) -> OptimizationRun:
    """Validate a new optimisation, save it and queue it after commit (``enqueue=False``: stored
    queued, sent by ``runs_send_unsent`` when a worker starts)."""
    cls = get_strategy(run.strategy)
    cls.search_space(run.space or None)  # unknown names / bad values -> StrategyParameterError
    if run.end <= run.start:
        raise ValueError("the period's end must be after its start")
    if run.method == OptimizationRun.Method.WALK_FORWARD:
        if not run.train_bars or not run.test_bars:
            raise ValueError("walk-forward needs train_bars and test_bars")
    else:
        run.combinations = len(_combinations(run))
        if run.combinations == 0:
            raise ValueError("the search space holds no valid combination")
    run.status = RunStatus.QUEUED
    run.save()
    if enqueue:
        transaction.on_commit(lambda: _enqueue_optimization(run.pk))
    return run


def _enqueue_optimization(run_id: int) -> None:
    from backtests.tasks import run_optimization_task

    task_id = str(uuid.uuid4())
    OptimizationRun.objects.filter(pk=run_id).update(task_id=task_id, heartbeat_at=timezone.now())
    run_optimization_task.apply_async((run_id,), task_id=task_id)


#: ``task_id`` of a run being sent by ``runs_send_unsent`` (replaced by the Celery task id).
SENDING = "sending"


def runs_send_unsent() -> int:
    """Send the runs stored as queued but never sent to a worker (no task id): those created
    while no broker could be reached, such as the demo's, made before the services start.
    Called when a worker starts; each run is claimed by one atomic update, so two workers
    starting together send it once. Returns how many were sent."""
    sent = 0
    for model, enqueue in (
        (BacktestRun, _enqueue_backtest),
        (OptimizationRun, _enqueue_optimization),
    ):
        unsent = model.objects.filter(status=RunStatus.QUEUED, task_id="").order_by("pk")
        for pk in unsent.values_list("pk", flat=True):
            if model.objects.filter(pk=pk, task_id="").update(task_id=SENDING):
                enqueue(pk)
                sent += 1
    return sent


def _chunks(run: OptimizationRun) -> list[list[dict[str, Any]]]:
    """The run's combinations in chunks of ``CHUNK_SIZE``: the same on every call (random
    search draws from the run's seed), so a lost chunk can be sent again by its index."""
    combos = _combinations(run)
    return [combos[i : i + CHUNK_SIZE] for i in range(0, len(combos), CHUNK_SIZE)]


def _send_chunks(run_id: int, chunks: dict[int, list[dict[str, Any]]]) -> None:
    from celery import group

    from backtests.tasks import run_optimization_chunk_task

    signatures = [run_optimization_chunk_task.s(run_id, i, combos) for i, combos in chunks.items()]
    group(signatures).apply_async()


def optimization_execute(run_id: int, *, task_id: str | None = None) -> OptimizationRun | None:
    """Start an optimisation (in a worker): walk-forward runs here; grid and random searches
    are split into chunks that run as a Celery group across every worker of the queue."""
    run = _start(OptimizationRun, run_id, task_id)
    if run is None:
        return None
    attempt = run.attempts
    try:
        cls = get_strategy(run.strategy)
        frame = _load(run)
        fields = _record_data(run, frame, cls)
        if run.method == OptimizationRun.Method.WALK_FORWARD:
            with _heartbeat(OptimizationRun, run_id, attempt):
                return _walk_forward(run, cls, frame, fields)
        chunks = _chunks(run)
        with transaction.atomic():
            locked = OptimizationRun.objects.select_for_update().get(pk=run_id)
            if locked.attempts != attempt or locked.status != RunStatus.RUNNING:
                return locked  # cancelled, or another start took it over
            for field in fields:
                setattr(locked, field, getattr(run, field))
            # A restart (its worker was lost) begins again: rows of chunks that finished before
            # would never be counted in chunks_done.
            locked.results.all().delete()
            locked.combinations = sum(len(chunk) for chunk in chunks)
            locked.chunks_total = len(chunks)
            locked.chunks_done = 0
            locked.heartbeat_at = timezone.now()
            locked.save(
                update_fields=[*fields, "combinations", "chunks_total", "chunks_done",
                               "heartbeat_at"]
            )  # fmt: skip
            transaction.on_commit(lambda: _send_chunks(run_id, dict(enumerate(chunks))))
        return locked
    except Exception as exc:
        logger.exception("optimisation %s failed", run_id)
        _fail(OptimizationRun, run_id, exc, attempt)
        return OptimizationRun.objects.get(pk=run_id)


def _walk_forward(
    run: OptimizationRun, cls: type[BaseStrategy], frame: pd.DataFrame, fields: list[str]
) -> OptimizationRun:
    from backtests.walkforward import walk_forward

    space = cls.search_space(run.space or None)
    result = walk_forward(
        frame, cls, space, train_bars=run.train_bars, test_bars=run.test_bars,
        objective=run.objective, **run.engine_options(),
    )  # fmt: skip
    windows = json.loads(result.windows.to_json(orient="records", date_format="iso"))
    with transaction.atomic():
        locked = OptimizationRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != RunStatus.RUNNING or locked.attempts != run.attempts:
            return locked  # cancelled, or another start took it over
        for field in fields:
            setattr(locked, field, getattr(run, field))
        locked.walk_forward = {
            "windows": windows,
            "equity": [None if not np.isfinite(v) else float(v) for v in result.equity],
            "equity_index": [t.isoformat() for t in result.equity.index]
            if isinstance(result.equity.index, pd.DatetimeIndex)
            else list(range(len(result.equity))),
            "trades": len(result.trades),
        }
        locked.best_metrics = _json_metrics(result.metrics)
        locked.best_parameters = windows[-1].get("parameters", {}) if windows else {}
        locked.combinations = len(windows)
        locked.status = RunStatus.DONE
        locked.progress = 1.0
        locked.finished_at = timezone.now()
        locked.save()
        _progress(locked, 1.0, RunStatus.DONE)
    return locked


def optimization_chunk(
    run_id: int, index: int, combos: list[dict[str, Any]], *, worker: str = ""
) -> int:
    """Evaluate one chunk of an optimisation and store its rows; the last chunk finishes the run.
    Idempotent: a redelivered chunk whose rows are stored does nothing."""
    from backtests.optimize import sweep_chunk
    from backtests.parallel import frame_arrays

    run = OptimizationRun.objects.filter(pk=run_id).first()
    if run is None or run.status != RunStatus.RUNNING:
        return 0
    if run.results.filter(chunk=index).exists():
        return 0
    try:
        OptimizationRun.objects.filter(pk=run_id).update(heartbeat_at=timezone.now())
        with _heartbeat(OptimizationRun, run_id, None):
            _test_pause("chunk")
            arrays = frame_arrays(_load(run))
            rows = sweep_chunk(arrays, run.strategy, combos, run.engine_options())
    except Exception as exc:
        logger.exception("optimisation %s chunk %s failed", run_id, index)
        _fail(OptimizationRun, run_id, exc)
        return 0
    cls = get_strategy(run.strategy)
    names = [spec.name for spec in cls.parameter_specs]
    with transaction.atomic():
        locked = OptimizationRun.objects.select_for_update().get(pk=run_id)
        if locked.status != RunStatus.RUNNING or locked.results.filter(chunk=index).exists():
            return 0
        OptimizationResult.objects.bulk_create(
            OptimizationResult(
                run=locked, chunk=index, worker=worker[:200],
                parameters={k: _json_value(row[k]) for k in names if k in row},
                metrics={k: _json_value(v) for k, v in row.items() if k not in names},
                objective=_json_value(row.get(locked.objective)),
            )
            for row in rows
        )  # fmt: skip
        locked.chunks_done += 1
        locked.progress = locked.chunks_done / max(locked.chunks_total, 1)
        locked.heartbeat_at = timezone.now()
        if locked.chunks_done >= locked.chunks_total:
            _finish_optimization(locked)
        locked.save()
        _progress(locked, locked.progress)
    return len(rows)


def _finish_optimization(run: OptimizationRun) -> None:
    from backtests.optimize import rank

    rows = [
        {**r.parameters, **r.metrics, "_id": r.pk}
        for r in run.results.all().only("parameters", "metrics")
    ]
    if rows:
        best = rank(pd.DataFrame(rows), run.objective).iloc[0]
        chosen = run.results.get(pk=int(best["_id"]))
        run.best_parameters = chosen.parameters
        run.best_metrics = chosen.metrics
    run.status = RunStatus.DONE
    run.progress = 1.0
    run.finished_at = timezone.now()


def runs_recover_stale(
    *, stale_for: timedelta | None = None, attempts: int | None = None
) -> dict[str, int]:
    """The watchdog (``backtests.recover_stale``, on the beat schedule): every queued or running
    run with no sign of life (``heartbeat_at``: sent, started, progressed or beat) for
    ``stale_for`` (default ``stale_after()``) lost its worker or its message. A running one
    that has had ``attempts`` starts (default ``max_attempts()``) is failed with the reason;
    others are sent again: a backtest, an optimisation that had not fanned out, and a queued
    run as a new task (its old message, should it come back, finds the run taken: ``_start``);
    the chunks of a fanned-out optimisation that stored no rows as new chunk tasks. Each run is
    decided under its row lock, so a redelivered task and the watchdog do not both act on it.
    Returns counts of runs requeued and failed."""
    cutoff = timezone.now() - (stale_for if stale_for is not None else stale_after())
    limit = attempts if attempts is not None else max_attempts()
    counts = {"requeued": 0, "failed": 0}
    quiet = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    for model in (BacktestRun, OptimizationRun):
        stale = model.objects.filter(quiet, status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        for pk in stale.values_list("pk", flat=True):
            outcome = _recover(model, pk, cutoff, limit)
            if outcome:
                counts[outcome] += 1
    if counts["requeued"] or counts["failed"]:
        logger.warning("runs of lost workers: %s", counts)
    return counts


@transaction.atomic
def _recover(
    model: type[BacktestRun | OptimizationRun], run_id: int, cutoff: datetime, limit: int
) -> str | None:
    run = model.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        return None  # finished since the query
    if (run.heartbeat_at or run.created_at) >= cutoff:
        return None  # alive again since the query
    now = timezone.now()
    if run.status == RunStatus.RUNNING and run.attempts >= limit:
        _mark_failed(run, _lost_reason(run, limit), now)
        return "failed"
    fanned_out = isinstance(run, OptimizationRun) and run.chunks_total > 0
    if run.status == RunStatus.RUNNING and fanned_out:
        # The chunks on a lost worker stay unacknowledged in the broker until its visibility
        # timeout: send the ones that stored nothing again (a chunk is idempotent).
        done = set(run.results.values_list("chunk", flat=True).distinct())
        missing = {i: c for i, c in enumerate(_chunks(run)) if i not in done}
        run.attempts += 1
        run.heartbeat_at = now
        run.save(update_fields=["attempts", "heartbeat_at"])
        transaction.on_commit(lambda: _send_chunks(run_id, missing))
        return "requeued"
    run.status = RunStatus.QUEUED
    run.progress = 0.0
    run.save(update_fields=["status", "progress"])
    _progress(run, 0.0, RunStatus.QUEUED)
    enqueue = _enqueue_backtest if isinstance(run, BacktestRun) else _enqueue_optimization
    transaction.on_commit(lambda: enqueue(run_id))
    return "requeued"


# --- checks for the pages' forms ----------------------------------------------------------------


class RunOptionsError(ValueError):
    """An engine setting of a run (cash, fee, slippage, size, fill, stops) is not acceptable;
    ``field`` names it (``None`` when the message names none)."""

    def __init__(self, field: str | None, message: str) -> None:
        self.field = field
        super().__init__(message)


#: The most cash a run may simulate (quote currency).
MAX_CASH = 1e15


def run_options_validate(options: dict[str, Any]) -> None:
    """Check a run's engine settings as the engine will (``EngineOptions``), before it is stored,
    so that a bad fee is refused at submission instead of failing the run in the worker.
    Raises ``RunOptionsError`` naming the setting."""
    from backtests.engine import EngineOptions

    try:
        EngineOptions(**options)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = next((name for name in options if text.startswith(f"{name} ")), None)
        raise RunOptionsError(field, text) from exc
    # Beyond the engine's own rules: amounts no account holds (1e308 overflows the equity
    # curve to inf) and a fee of the whole notional or more.
    if "cash" in options and not float(options["cash"]) <= MAX_CASH:
        raise RunOptionsError("cash", f"cash must be at most {MAX_CASH:g}")
    if "fee" in options and not float(options["fee"]) < 1:
        raise RunOptionsError("fee", f"fee must be below 1 (a fraction), got {options['fee']!r}")


def _run_options_checked(run: BacktestRun | OptimizationRun) -> None:
    """``run_options_validate`` as a ``ValidationError`` keyed by the run's field."""
    from django.core.exceptions import ValidationError

    try:
        run_options_validate(run.engine_options())
    except RunOptionsError as exc:
        raise ValidationError({exc.field or "non_field_errors": [str(exc)]}) from exc


# --- creating optimisations and re-running runs (the API and the admin) -------------------------

#: The most combinations one optimisation may try (the grid's size; random search's ``n_iter``):
#: enumerating and checking a grid happens before anything is stored, in the request.
OPTIMIZATION_MAX_COMBINATIONS = 100_000

#: The settings a re-run copies: everything that defines the run, nothing it produced.
_RUN_SETTINGS = (
    "owner", "strategy", "instrument", "timeframe", "start", "end", "cash", "fee", "slippage",
    "size", "fill", "allow_short", "fee_in_base", "stop_loss", "take_profit", "trailing_stop",
)  # fmt: skip
_OPTIMIZATION_SETTINGS = ("method", "space", "objective", "n_iter", "seed", "train_bars",
                          "test_bars")  # fmt: skip


def _space_errors(run: OptimizationRun, cls: type[BaseStrategy]) -> list[str]:
    """What is wrong with the run's search space: not an object, unknown parameters, values the
    strategy refuses, or a grid beyond ``OPTIMIZATION_MAX_COMBINATIONS``."""
    space = run.space if run.space is not None else {}
    if not isinstance(space, dict):
        return ["give a JSON object of parameter name -> list of values to try"]
    try:
        grid = cls.search_space(space or None)
    except StrategyParameterError as exc:
        return [str(exc)]
    size = 1
    for values in grid.values():
        size *= max(len(values), 1)
    if run.method == OptimizationRun.Method.GRID and size > OPTIMIZATION_MAX_COMBINATIONS:
        return [
            f"the grid holds {size:,} combinations; at most {OPTIMIZATION_MAX_COMBINATIONS:,} "
            "(narrow it or use random search)"
        ]
    return []


def _has_combination(run: OptimizationRun, cls: type[BaseStrategy]) -> bool:
    """Whether the run would try anything: a grid stops at its first valid combination; a
    random search draws its combinations (at most ``OPTIMIZATION_MAX_COMBINATIONS``)."""
    if run.method == OptimizationRun.Method.RANDOM:
        return 1 <= run.n_iter <= OPTIMIZATION_MAX_COMBINATIONS and bool(_combinations(run))
    return next(cls.parameter_grid(run.space or None), None) is not None


def optimization_validate(*, run: OptimizationRun) -> None:
    """The checks ``optimization_submit`` makes (a space with at least one valid combination
    included), the engine settings and the size limit, as a ``ValidationError`` keyed by the
    run's field names (what forms and the API show next to the inputs). Stores nothing."""
    from django.core.exceptions import ValidationError

    from backtests.metrics import METRIC_NAMES
    from strategies.registry import UnknownStrategyError

    try:
        cls = get_strategy(run.strategy)
    except UnknownStrategyError as exc:
        raise ValidationError({"strategy": [str(exc)]}) from exc
    errors: dict[str, list[str]] = {}
    space = _space_errors(run, cls)
    if space:
        errors["space"] = space
    elif not _has_combination(run, cls):
        errors["space"] = ["the search space holds no valid combination"]
    try:
        run_options_validate(run.engine_options())
    except RunOptionsError as exc:
        errors[exc.field or "non_field_errors"] = [str(exc)]
    if run.objective not in METRIC_NAMES:
        errors["objective"] = [f"one of {', '.join(METRIC_NAMES)}"]
    if run.start and run.end and run.end <= run.start:
        errors["end"] = ["must be after start"]
    if run.method == OptimizationRun.Method.RANDOM and not (
        1 <= run.n_iter <= OPTIMIZATION_MAX_COMBINATIONS
    ):
        errors["n_iter"] = [f"between 1 and {OPTIMIZATION_MAX_COMBINATIONS:,}"]
    if run.method == OptimizationRun.Method.WALK_FORWARD:
        for name in ("train_bars", "test_bars"):
            if not getattr(run, name):
                errors[name] = ["walk-forward needs a number of bars"]
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def optimization_create(
    *,
    user: Any,
    strategy: str,
    instrument: Instrument,
    timeframe: str,
    start: datetime,
    end: datetime,
    enqueue: bool = True,
    **fields: Any,
) -> OptimizationRun:
    """Validate and store an optimisation, queued after commit (``optimization_submit``).
    ``fields``: the other fields of ``OptimizationRun`` (method, space, objective, n_iter,
    seed, train_bars, test_bars, costs and stops). Raises ``django.core.exceptions.
    ValidationError`` keyed by field; nothing is stored then."""
    from django.core.exceptions import ValidationError

    run = OptimizationRun(
        owner=user, strategy=strategy, instrument=instrument, timeframe=timeframe, start=start,
        end=end, **fields,
    )  # fmt: skip
    optimization_validate(run=run)
    run.full_clean(exclude=["owner", "space", "task_id"])
    try:
        return optimization_submit(run=run, enqueue=enqueue)
    except ValueError as exc:  # checked above already; kept as a 400, never a 500
        raise ValidationError({"space": [str(exc)]}) from exc


@transaction.atomic
def backtest_rerun(*, run: BacktestRun) -> BacktestRun:
    """A new queued backtest with ``run``'s settings (owner, strategy, parameters, market,
    period, costs, stops), validated again: a strategy changed since raises as at creation."""
    fresh = BacktestRun(parameters=dict(run.parameters or {}),
                        **{name: getattr(run, name) for name in _RUN_SETTINGS})  # fmt: skip
    return backtest_submit(run=fresh)


@transaction.atomic
def optimization_rerun(*, run: OptimizationRun) -> OptimizationRun:
    """A new queued optimisation with ``run``'s settings, validated again
    (``optimization_validate``)."""
    fields = {name: getattr(run, name) for name in (*_RUN_SETTINGS, *_OPTIMIZATION_SETTINGS)}
    owner = fields.pop("owner")
    return optimization_create(user=owner, **fields)
