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
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from backtests.models import (
    FINISHED,
    BacktestRun,
    OptimizationChunk,
    OptimizationResult,
    OptimizationRun,
    RunStatus,
)
from marketdata.models import Instrument
from marketdata.selectors import candles_frame
from strategies.base import BaseStrategy, StrategyParameterError
from strategies.registry import get_strategy
from tradeapp.db import retried, retry_transient
from tradeapp.events import publish_on_commit
from tradeapp.limits import Limits
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
# one redelivers it before the visibility timeout (an hour). Every run, and every chunk of a
# search, therefore beats while it runs (``heartbeat_at``, every ``TRADEAPP_RUN_HEARTBEAT``
# seconds) and counts its starts (``attempts``; a chunk its ``sends``); ``runs_recover_stale``
# (the ``backtests.recover_stale`` task, on the beat schedule every 15 seconds) sends again what
# went quiet for ``TRADEAPP_RUN_STALE_AFTER`` seconds, so a dead worker's run resumes within a
# minute, or, once its starts are used up, fails it. Each start fences the ones before it: a
# start writes only while ``attempts`` still holds its own number; of two deliveries of one
# chunk, the first to store its rows wins and the other stores nothing.
#
# Every write is a short transaction, run again when it loses a lock race
# (``tradeapp.db.retried``): a busy database delays a run, it never fails it.

#: Tests only (``tradeapp.pause``): "<point>:<marker file>" pauses the first run reaching
#: ``point`` ("backtest", "chunk") so that a test can kill its worker there.
TEST_PAUSE_ENV = "TRADEAPP_TEST_PAUSE_BACKTEST"


def _test_pause(point: str) -> None:
    pause_point(TEST_PAUSE_ENV, point)


def stale_after() -> timedelta:
    """How long a running run (or chunk) may go without a heartbeat before the watchdog takes
    its worker for lost (``TRADEAPP_RUN_STALE_AFTER`` seconds, default 30)."""
    return timedelta(seconds=float(getattr(settings, "TRADEAPP_RUN_STALE_AFTER", 30)))


def queued_stale_after() -> timedelta:
    """How long a queued run (or a sent chunk) may wait before its message is taken for lost
    (``TRADEAPP_RUN_QUEUED_STALE_AFTER`` seconds, default 10 minutes): waiting in a busy queue
    is normal, so this is longer than ``stale_after``."""
    return timedelta(seconds=float(getattr(settings, "TRADEAPP_RUN_QUEUED_STALE_AFTER", 600)))


def max_attempts() -> int:
    """Starts a run gets before a lost worker fails it (``TRADEAPP_RUN_MAX_ATTEMPTS``)."""
    return int(getattr(settings, "TRADEAPP_RUN_MAX_ATTEMPTS", 3))


def chunks_in_flight() -> int:
    """Chunks of one user's searches queued or running at a time
    (``TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT``)."""
    return max(1, int(getattr(settings, "TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT", 2)))


@contextmanager
def _heartbeat(*beats: QuerySet) -> Iterator[None]:
    """While the block runs, a thread stamps ``heartbeat_at`` on the rows of ``beats`` (the run,
    and a chunk's own row) every ``TRADEAPP_RUN_HEARTBEAT`` seconds (default 10): a long
    simulation stays visibly alive; a killed process goes quiet."""
    interval = float(getattr(settings, "TRADEAPP_RUN_HEARTBEAT", 10))
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(interval):
                for rows in beats:
                    try:
                        retry_transient(rows.update, heartbeat_at=timezone.now(), attempts=3)
                    except DatabaseError as exc:  # a missed beat is not fatal: the next retries
                        logger.warning("heartbeat of %s not stored: %r", rows.model.__name__, exc)
        finally:
            connections.close_all()  # this thread's own connections

    thread = threading.Thread(target=beat, name="run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _beats(
    model: type[BacktestRun | OptimizationRun], run_id: int, attempt: int | None
) -> QuerySet:
    """The rows a run's heartbeat stamps: the run while it runs (under ``attempt``, if given)."""
    rows = model.objects.filter(pk=run_id, status=RunStatus.RUNNING)
    return rows if attempt is None else rows.filter(attempts=attempt)


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
    """Validate a new (unsaved or queued) run, save it and queue it after commit. A new run is
    checked against its owner's limits (``tradeapp.limits``: bars, runs at once), raising
    ``LimitExceeded`` before anything is stored."""
    run.parameters = _validated_parameters(run.strategy, run.parameters or {})
    if run.end <= run.start:
        raise ValueError("the period's end must be after its start")
    if run.pk is None:  # the owner's limits (tradeapp.limits): bars, then runs at once
        from tradeapp import limits

        limits.check_research_run(run.owner, start=run.start, end=run.end, timeframe=run.timeframe)
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
    from tradeapp import limits

    limits.check_research_run(user, start=start, end=end, timeframe=timeframe)
    run.save()
    return run


def _enqueue_backtest(run_id: int) -> None:
    from backtests.tasks import run_backtest_task

    # The id is stored before the message leaves: a start under it is the run's own (_start).
    task_id = str(uuid.uuid4())
    BacktestRun.objects.filter(pk=run_id).update(task_id=task_id, heartbeat_at=timezone.now())
    run_backtest_task.apply_async((run_id,), task_id=task_id)


@retried
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


def _mark_done(run: BacktestRun | OptimizationRun, fields: list[str] | None = None) -> None:
    """Finish a locked run (in the caller's transaction) and announce it; ``fields``: the other
    fields the caller set (all fields are saved when None)."""
    run.status = RunStatus.DONE
    run.progress = 1.0
    run.finished_at = timezone.now()
    update = None if fields is None else [*fields, "status", "progress", "finished_at"]
    run.save(update_fields=update)
    _progress(run, 1.0, RunStatus.DONE)


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


@retried
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
    ``task_id``: the Celery task's id (see ``_start``). Every write is one short transaction,
    run again when it loses a lock race (``tradeapp.db.retry_transient``)."""
    from backtests.engine import run_backtest

    run = _start(BacktestRun, run_id, task_id)
    if run is None:
        return None
    attempt = run.attempts
    try:
        with _heartbeat(_beats(BacktestRun, run_id, attempt)):
            cls = get_strategy(run.strategy)
            frame = _load(run)
            fields = _record_data(run, frame, cls)
            if not retry_transient(
                BacktestRun.objects.filter(pk=run.pk, attempts=attempt).update,
                progress=0.2, heartbeat_at=timezone.now(), **{f: getattr(run, f) for f in fields},
            ):  # fmt: skip
                raise RunSuperseded
            _test_pause("backtest")
            _check_cancelled(BacktestRun, run_id)
            result = run_backtest(frame, cls, run.parameters, **run.engine_options())
        _check_cancelled(BacktestRun, run_id)
        return _backtest_store(run_id, attempt, result)
    except (RunCancelled, RunSuperseded):
        return BacktestRun.objects.get(pk=run_id)
    except Exception as exc:
        logger.exception("backtest %s failed", run_id)
        _fail(BacktestRun, run_id, exc, attempt)
        return BacktestRun.objects.get(pk=run_id)


@retried
@transaction.atomic
def _backtest_store(run_id: int, attempt: int, result: Any) -> BacktestRun:
    """Store a finished backtest's result, fenced by its start (``attempt``)."""
    locked = BacktestRun.objects.select_for_update().get(pk=run_id)
    if locked.status == RunStatus.CANCELLED:
        raise RunCancelled
    if locked.attempts != attempt or locked.status != RunStatus.RUNNING:
        raise RunSuperseded
    locked.metrics = _json_metrics(result.metrics)
    locked.equity_blob = pack_equity(result.equity)
    locked.trades_blob = pack_trades(result.trades)
    locked.trades_count = len(result.trades)
    _mark_done(locked)
    return locked


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
    """The run's combinations in chunks of ``CHUNK_SIZE``, the same on every call (random
    search draws from the run's seed)."""
    combos = _combinations(run)
    return [combos[i : i + CHUNK_SIZE] for i in range(0, len(combos), CHUNK_SIZE)]


def _send_chunks(run_id: int, indexes: list[int]) -> None:
    from celery import group

    from backtests.tasks import run_optimization_chunk_task

    if indexes:
        group(run_optimization_chunk_task.s(run_id, i) for i in indexes).apply_async()


def _dispatch(owner_id: int) -> dict[int, list[int]]:
    """Send the next pending chunks of ``owner_id``'s running searches, so that at most
    ``chunks_in_flight()`` of that user's chunks are queued or running, taking the user's
    searches in turn (in the caller's transaction; sent after commit). This is what keeps
    research fair: one user's searches enter the queue a few chunks at a time, each finished
    chunk sending the next, so another user's backtest queued meanwhile waits behind a few
    chunks instead of whole searches. Returns the chunk indexes sent, by run."""
    from tradeapp.limits import lock_user

    # One decision per user at a time: two chunks finishing together do not both fill a slot.
    lock_user(owner_id)
    chunks = OptimizationChunk.objects.filter(
        run__owner_id=owner_id, run__status=RunStatus.RUNNING, run__chunks_total__gt=0
    )
    in_flight = [OptimizationChunk.State.SENT, OptimizationChunk.State.RUNNING]
    free = chunks_in_flight() - chunks.filter(state__in=in_flight).count()
    if free <= 0:
        return {}
    busy: dict[int, int] = dict.fromkeys(
        chunks.filter(state=OptimizationChunk.State.PENDING)
        .values_list("run_id", flat=True)
        .distinct(),
        0,
    )
    for run_id in chunks.filter(state__in=in_flight, run_id__in=busy).values_list(
        "run_id", flat=True
    ):
        busy[run_id] += 1
    picked: dict[int, list[int]] = {}
    pending = chunks.filter(state=OptimizationChunk.State.PENDING).order_by("index")
    for _ in range(free):
        if not busy:
            break
        run_id = min(busy, key=lambda pk: (busy[pk], pk))  # the search with least in flight
        index = pending.filter(run_id=run_id).exclude(index__in=picked.get(run_id, []))
        index = index.values_list("index", flat=True).first()
        if index is None:
            del busy[run_id]
            continue
        picked.setdefault(run_id, []).append(index)
        busy[run_id] += 1
    for run_id, indexes in picked.items():
        OptimizationChunk.objects.filter(run_id=run_id, index__in=indexes).update(
            state=OptimizationChunk.State.SENT, sent_at=timezone.now(), heartbeat_at=None,
            sends=F("sends") + 1, worker="",
        )  # fmt: skip
        transaction.on_commit(lambda run_id=run_id, indexes=indexes: _send_chunks(run_id, indexes))
    return picked


#: Rows written or deleted per transaction when a search fans out or starts again: no single
#: write holds the database (SQLite's one write lock, above all) for long.
WRITE_BATCH = 200


def optimization_execute(run_id: int, *, task_id: str | None = None) -> OptimizationRun | None:
    """Start an optimisation (in a worker): walk-forward runs here; grid and random searches
    are split into chunks, stored, and sent a few at a time (``_dispatch``) to every worker of
    the queue. A restart (its worker was lost) begins again: rows of chunks that finished
    before are deleted first, in bounded batches."""
    run = _start(OptimizationRun, run_id, task_id)
    if run is None:
        return None
    attempt = run.attempts
    try:
        cls = get_strategy(run.strategy)
        frame = _load(run)
        fields = _record_data(run, frame, cls)
        if run.method == OptimizationRun.Method.WALK_FORWARD:
            with _heartbeat(_beats(OptimizationRun, run_id, attempt)):
                return _walk_forward(run, cls, frame, fields)
        chunks = _chunks(run)
        combinations = sum(len(chunk) for chunk in chunks)
        if not _fan_out_begin(run, attempt, fields, combinations):
            return OptimizationRun.objects.get(pk=run_id)  # cancelled, or another start took it
        for model in (OptimizationResult, OptimizationChunk):
            _delete_batched(model.objects.filter(run_id=run_id))
        for first in range(0, len(chunks), WRITE_BATCH):
            _store_chunk_rows(run_id, attempt, chunks, first)
        return _fan_out_end(run_id, attempt, len(chunks))
    except RunSuperseded:
        return OptimizationRun.objects.get(pk=run_id)
    except Exception as exc:
        logger.exception("optimisation %s failed", run_id)
        _fail(OptimizationRun, run_id, exc, attempt)
        return OptimizationRun.objects.get(pk=run_id)


@retried
@transaction.atomic
def _fan_out_begin(
    run: OptimizationRun, attempt: int, fields: list[str], combinations: int
) -> bool:
    locked = OptimizationRun.objects.select_for_update().get(pk=run.pk)
    if locked.attempts != attempt or locked.status != RunStatus.RUNNING:
        return False
    for field in fields:
        setattr(locked, field, getattr(run, field))
    locked.combinations = combinations
    locked.chunks_total = 0  # "not fanned out" until every chunk is stored (_fan_out_end)
    locked.chunks_done = 0
    locked.heartbeat_at = timezone.now()
    locked.save(update_fields=[*fields, "combinations", "chunks_total", "chunks_done",
                               "heartbeat_at"])  # fmt: skip
    return True


def _delete_batched(rows: QuerySet) -> None:
    """Delete ``rows`` ``WRITE_BATCH * 25`` at a time, each batch its own short transaction."""
    while ids := list(rows.values_list("pk", flat=True)[: WRITE_BATCH * 25]):
        retry_transient(rows.model.objects.filter(pk__in=ids).delete)


@retried
@transaction.atomic
def _store_chunk_rows(
    run_id: int, attempt: int, chunks: list[list[dict[str, Any]]], first: int
) -> None:
    if not OptimizationRun.objects.filter(
        pk=run_id, attempts=attempt, status=RunStatus.RUNNING
    ).update(heartbeat_at=timezone.now()):
        raise RunSuperseded
    OptimizationChunk.objects.bulk_create(
        OptimizationChunk(run_id=run_id, index=index, combinations=chunks[index])
        for index in range(first, min(first + WRITE_BATCH, len(chunks)))
    )


@retried
@transaction.atomic
def _fan_out_end(run_id: int, attempt: int, chunks_total: int) -> OptimizationRun:
    locked = OptimizationRun.objects.select_for_update().get(pk=run_id)
    if locked.attempts != attempt or locked.status != RunStatus.RUNNING:
        return locked
    locked.chunks_total = chunks_total
    locked.heartbeat_at = timezone.now()
    locked.save(update_fields=["chunks_total", "heartbeat_at"])
    _dispatch(locked.owner_id)
    return locked


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
    return retry_transient(_walk_forward_store, run, fields, result, windows)


@transaction.atomic
def _walk_forward_store(
    run: OptimizationRun, fields: list[str], result: Any, windows: list[dict[str, Any]]
) -> OptimizationRun:
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
    _mark_done(locked)
    return locked


def optimization_chunk(
    run_id: int, index: int, combos: list[dict[str, Any]] | None = None, *, worker: str = ""
) -> int:
    """Evaluate one stored chunk of an optimisation and store its rows; each chunk sends the
    next (``_dispatch``) and the last one finishes the run. Idempotent: a redelivered chunk
    whose rows are stored does nothing, and of two deliveries of one chunk the first to store
    wins. ``combos``: ignored (messages sent before chunks were stored carried them)."""
    from backtests.optimize import sweep_chunk
    from backtests.parallel import frame_arrays

    claimed = _chunk_claim(run_id, index, worker)
    if claimed is None:
        return 0
    run, chunk = claimed
    beats = OptimizationChunk.objects.filter(
        pk=chunk.pk, state=OptimizationChunk.State.RUNNING, sends=chunk.sends
    )
    try:
        with _heartbeat(_beats(OptimizationRun, run_id, None), beats):
            _test_pause("chunk")
            arrays = frame_arrays(_load(run))
            rows = sweep_chunk(arrays, run.strategy, chunk.combinations, run.engine_options())
    except Exception as exc:
        logger.exception("optimisation %s chunk %s failed", run_id, index)
        _fail(OptimizationRun, run_id, exc)
        return 0
    if _chunk_store(run_id, index, rows, worker):
        _finish_optimization(run_id)
    return len(rows)


@retried
@transaction.atomic
def _chunk_claim(
    run_id: int, index: int, worker: str
) -> tuple[OptimizationRun, OptimizationChunk] | None:
    """Mark a chunk running on ``worker``; None when its run is not running or the chunk is
    done (or unknown: a message of a run that fanned out again since)."""
    run = OptimizationRun.objects.filter(pk=run_id).first()
    if run is None or run.status != RunStatus.RUNNING:
        return None
    chunk = OptimizationChunk.objects.select_for_update().filter(run_id=run_id, index=index).first()
    if chunk is None or chunk.state == OptimizationChunk.State.DONE:
        return None
    now = timezone.now()
    chunk.state = OptimizationChunk.State.RUNNING
    chunk.started_at = chunk.heartbeat_at = now
    chunk.worker = worker[:200]
    chunk.save(update_fields=["state", "started_at", "heartbeat_at", "worker"])
    OptimizationRun.objects.filter(pk=run_id).update(heartbeat_at=now)
    return run, chunk


@retried
@transaction.atomic
def _chunk_store(run_id: int, index: int, rows: list[dict[str, Any]], worker: str) -> bool:
    """Store a chunk's rows (about ``CHUNK_SIZE``: one short write) and send the next chunk.
    True when it was the last: the caller finishes the run outside this transaction."""
    locked = OptimizationRun.objects.select_for_update().get(pk=run_id)
    chunk = OptimizationChunk.objects.select_for_update().filter(run_id=run_id, index=index).first()
    if locked.status != RunStatus.RUNNING or chunk is None:
        return False
    if chunk.state == OptimizationChunk.State.DONE:
        return False  # another delivery of the chunk stored it first
    names = [spec.name for spec in get_strategy(locked.strategy).parameter_specs]
    OptimizationResult.objects.bulk_create(
        OptimizationResult(
            run=locked, chunk=index, worker=worker[:200],
            parameters={k: _json_value(row[k]) for k in names if k in row},
            metrics={k: _json_value(v) for k, v in row.items() if k not in names},
            objective=_json_value(row.get(locked.objective)),
        )
        for row in rows
    )  # fmt: skip
    now = timezone.now()
    chunk.state = OptimizationChunk.State.DONE
    chunk.finished_at = now
    chunk.worker = worker[:200]
    chunk.save(update_fields=["state", "finished_at", "worker"])
    locked.chunks_done += 1
    locked.progress = locked.chunks_done / max(locked.chunks_total, 1)
    locked.heartbeat_at = now
    locked.save(update_fields=["chunks_done", "progress", "heartbeat_at"])
    _progress(locked, locked.progress)
    _dispatch(locked.owner_id)  # the freed slot: this search's next chunk, or another's
    return locked.chunks_done >= locked.chunks_total


def _finish_optimization(run_id: int) -> None:
    """Rank a finished search's rows and mark it done. The ranking reads every row (100,000 for
    the largest grid) outside any write transaction; only the result is written, briefly."""
    from backtests.optimize import rank

    objective = OptimizationRun.objects.values_list("objective", flat=True).get(pk=run_id)
    rows = [
        {**parameters, **metrics, "_id": pk}
        for pk, parameters, metrics in OptimizationResult.objects.filter(run_id=run_id)
        .order_by("pk")  # ties ranked in id order, as the page and the API show them
        .values_list("pk", "parameters", "metrics")
        .iterator(chunk_size=5000)
    ]
    best = int(rank(pd.DataFrame(rows), objective).iloc[0]["_id"]) if rows else None
    _finish_store(run_id, best)


@retried
@transaction.atomic
def _finish_store(run_id: int, best: int | None) -> None:
    run = OptimizationRun.objects.select_for_update().get(pk=run_id)
    if run.status != RunStatus.RUNNING or run.chunks_done < run.chunks_total:
        return
    if best is not None:
        chosen = OptimizationResult.objects.get(pk=best)
        run.best_parameters = chosen.parameters
        run.best_metrics = chosen.metrics
    run.heartbeat_at = timezone.now()
    _mark_done(run, ["best_parameters", "best_metrics", "heartbeat_at"])


def runs_recover_stale(
    *,
    stale_for: timedelta | None = None,
    attempts: int | None = None,
    queued_for: timedelta | None = None,
) -> dict[str, int]:
    """The watchdog (``backtests.recover_stale``, on the beat schedule every 15 seconds).

    * A running run with no sign of life (``heartbeat_at``: started, progressed or beat) for
      ``stale_for`` (default ``stale_after()``, 30 s) lost its worker; a queued one with none
      for ``queued_for`` (default ``queued_stale_after()``, or ``stale_for`` when only that is
      given) lost its message. A running one that has had ``attempts`` starts (default
      ``max_attempts()``) is failed with the reason; others are sent again as a new task (an
      old message, should it come back, finds the run taken: ``_start``).
    * A fanned-out search is looked after chunk by chunk, whatever its other chunks do: a
      running chunk quiet for ``stale_for``, or a sent one not started for ``queued_for``, is
      sent again (the run fails once one chunk has had ``attempts`` sends); a search whose
      chunks are all stored is finished; one with nothing in flight gets its next chunks.

    Each run is decided under its row lock, so a redelivered task and the watchdog do not both
    act on it. Returns counts of runs requeued (or with chunks sent again) and failed."""
    now = timezone.now()
    if queued_for is None:
        queued_for = stale_for if stale_for is not None else queued_stale_after()
    if stale_for is None:
        stale_for = stale_after()
    running_cutoff, queued_cutoff = now - stale_for, now - queued_for
    limit = attempts if attempts is not None else max_attempts()
    counts = {"requeued": 0, "failed": 0}
    quiet_running = Q(status=RunStatus.RUNNING) & (
        Q(heartbeat_at__lt=running_cutoff)
        | Q(heartbeat_at__isnull=True, created_at__lt=running_cutoff)
    )
    quiet_queued = Q(status=RunStatus.QUEUED) & (
        Q(heartbeat_at__lt=queued_cutoff)
        | Q(heartbeat_at__isnull=True, created_at__lt=queued_cutoff)
    )
    fanned_out = OptimizationRun.objects.filter(status=RunStatus.RUNNING, chunks_total__gt=0)
    searches = set(fanned_out.filter(chunks__isnull=False).values_list("pk", flat=True))
    for model in (BacktestRun, OptimizationRun):
        rows = model.objects.filter(quiet_running | quiet_queued)
        for pk in rows.values_list("pk", flat=True):
            if model is OptimizationRun and pk in searches:
                continue  # looked after chunk by chunk, below
            outcome = _recover(model, pk, running_cutoff, queued_cutoff, limit)
            if outcome:
                counts[outcome] += 1
    lost_chunks = OptimizationChunk.objects.filter(
        Q(state=OptimizationChunk.State.RUNNING, heartbeat_at__lt=running_cutoff)
        | Q(state=OptimizationChunk.State.SENT, sent_at__lt=queued_cutoff),
        run__status=RunStatus.RUNNING,
    )
    to_check = set(lost_chunks.values_list("run_id", flat=True))
    to_check |= set(
        fanned_out.filter(pk__in=searches)
        .filter(Q(heartbeat_at__lt=running_cutoff) | Q(chunks_done__gte=F("chunks_total")))
        .values_list("pk", flat=True)
    )
    for pk in sorted(to_check):
        outcome = _recover_search(pk, running_cutoff, queued_cutoff, limit)
        if outcome:
            counts[outcome] += 1
    if counts["requeued"] or counts["failed"]:
        logger.warning("runs of lost workers: %s", counts)
    return counts


@retried
@transaction.atomic
def _recover(
    model: type[BacktestRun | OptimizationRun],
    run_id: int,
    running_cutoff: datetime,
    queued_cutoff: datetime,
    limit: int,
) -> str | None:
    run = model.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        return None  # finished since the query
    cutoff = running_cutoff if run.status == RunStatus.RUNNING else queued_cutoff
    if (run.heartbeat_at or run.created_at) >= cutoff:
        return None  # alive again since the query
    now = timezone.now()
    if run.status == RunStatus.RUNNING and run.attempts >= limit:
        _mark_failed(run, _lost_reason(run, limit), now)
        return "failed"
    # A search that had not stored all its chunks starts again (its start deletes them).
    run.status = RunStatus.QUEUED
    run.progress = 0.0
    run.save(update_fields=["status", "progress"])
    _progress(run, 0.0, RunStatus.QUEUED)
    enqueue = _enqueue_backtest if isinstance(run, BacktestRun) else _enqueue_optimization
    transaction.on_commit(lambda: enqueue(run_id))
    return "requeued"


def _recover_search(
    run_id: int, running_cutoff: datetime, queued_cutoff: datetime, limit: int
) -> str | None:
    """The watchdog's care of one fanned-out search (``runs_recover_stale``)."""
    outcome, finish = _recover_chunks(run_id, running_cutoff, queued_cutoff, limit)
    if finish:
        _finish_optimization(run_id)
    return outcome


@retried
@transaction.atomic
def _recover_chunks(
    run_id: int, running_cutoff: datetime, queued_cutoff: datetime, limit: int
) -> tuple[str | None, bool]:
    run = OptimizationRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status != RunStatus.RUNNING or not run.chunks_total:
        return None, False
    if run.chunks_done >= run.chunks_total:
        return None, True  # every chunk stored; its finish was lost
    lost = list(
        OptimizationChunk.objects.filter(
            Q(state=OptimizationChunk.State.RUNNING, heartbeat_at__lt=running_cutoff)
            | Q(state=OptimizationChunk.State.SENT, sent_at__lt=queued_cutoff),
            run=run,
        )
    )
    used_up = [chunk for chunk in lost if chunk.sends >= limit]
    if used_up:
        chunk = used_up[0]
        _mark_failed(
            run,
            f"worker lost: chunk {chunk.index} had no sign of life since "
            f"{(chunk.heartbeat_at or chunk.sent_at or run.created_at).isoformat()}, after "
            f"{chunk.sends} send(s) (at most {limit}); the worker was killed or the broker "
            "lost the task",
            timezone.now(),
        )
        return "failed", False
    if lost:
        OptimizationChunk.objects.filter(pk__in=[c.pk for c in lost]).update(
            state=OptimizationChunk.State.PENDING
        )
        logger.warning(
            "optimisation %s: chunks %s lost their worker; sent again",
            run_id, [c.index for c in lost],
        )  # fmt: skip
    sent = _dispatch(run.owner_id)
    if lost or sent:
        run.heartbeat_at = timezone.now()
        run.save(update_fields=["heartbeat_at"])
        return "requeued", False
    return None, False


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

#: The settings a re-run copies: everything that defines the run, nothing it produced.
_RUN_SETTINGS = (
    "owner", "strategy", "instrument", "timeframe", "start", "end", "cash", "fee", "slippage",
    "size", "fill", "allow_short", "fee_in_base", "stop_loss", "take_profit", "trailing_stop",
)  # fmt: skip
_OPTIMIZATION_SETTINGS = ("method", "space", "objective", "n_iter", "seed", "train_bars",
                          "test_bars")  # fmt: skip


def _space_errors(run: OptimizationRun, cls: type[BaseStrategy], allowed: Limits) -> list[str]:
    """What is wrong with the run's search space: not an object, unknown parameters, values the
    strategy refuses. A grid (a walk-forward window's included) beyond the owner's
    ``allowed.combinations`` raises ``LimitExceeded``: its size is the product of the value
    lists, known before anything is enumerated."""
    from tradeapp.limits import check_combinations

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
    if run.method != OptimizationRun.Method.RANDOM:
        check_combinations(allowed, size, method=run.method)
    return []


def _has_combination(run: OptimizationRun, cls: type[BaseStrategy], allowed: Limits) -> bool:
    """Whether the run would try anything: a grid stops at its first valid combination; a
    random search draws its combinations (at most the owner's ``allowed.combinations``)."""
    if run.method == OptimizationRun.Method.RANDOM:
        return 1 <= run.n_iter <= allowed.combinations and bool(_combinations(run))
    return next(cls.parameter_grid(run.space or None), None) is not None


def optimization_validate(*, run: OptimizationRun) -> None:
    """The checks ``optimization_submit`` makes (a space with at least one valid combination
    included), the engine settings and the owner's size limits (``tradeapp.limits``:
    combinations, bars; the owner's defaults when the run has none yet), as a
    ``ValidationError`` keyed by the run's field names (what forms and the API show next to the
    inputs): a ``LimitExceeded`` (400) when only limits refuse it. Stores nothing."""
    from django.core.exceptions import ValidationError

    from backtests.metrics import METRIC_NAMES
    from strategies.registry import UnknownStrategyError
    from tradeapp.limits import SizeChecks, check_bars, check_combinations, limits_for

    try:
        cls = get_strategy(run.strategy)
    except UnknownStrategyError as exc:
        raise ValidationError({"strategy": [str(exc)]}) from exc
    allowed = limits_for(run.owner if run.owner_id else None)
    errors: dict[str, list[str]] = {}
    sizes = SizeChecks()
    random = run.method == OptimizationRun.Method.RANDOM
    if random and run.n_iter < 1:
        errors["n_iter"] = [f"between 1 and {allowed.combinations:,}"]
    elif random:
        with sizes.checking():
            check_combinations(allowed, run.n_iter, method="random")
    space: list[str] = []
    with sizes.checking():
        space = _space_errors(run, cls, allowed)
    if not (space or errors or sizes) and not _has_combination(run, cls, allowed):
        space = ["the search space holds no valid combination"]
    if space:
        errors["space"] = space
    with sizes.checking():
        check_bars(allowed, run.start, run.end, run.timeframe)
    try:
        run_options_validate(run.engine_options())
    except RunOptionsError as exc:
        errors[exc.field or "non_field_errors"] = [str(exc)]
    if run.objective not in METRIC_NAMES:
        errors["objective"] = [f"one of {', '.join(METRIC_NAMES)}"]
    if run.start and run.end and run.end <= run.start:
        errors["end"] = ["must be after start"]
    if run.method == OptimizationRun.Method.WALK_FORWARD:
        for name in ("train_bars", "test_bars"):
            if not getattr(run, name):
                errors[name] = ["walk-forward needs a number of bars"]
    sizes.raise_with(errors)


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
    from tradeapp.limits import check_research_runs

    check_research_runs(user)  # under the user's row lock, until this transaction ends
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
