"""The research queue's rules, without workers: a search's chunks go out a few at a time, a lost
lock race is retried instead of failing the run, and the watchdog's care of one chunk.

(With real worker processes: tests/faults/test_worker_faults.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, OperationalError, transaction

from backtests import services
from backtests.models import OptimizationChunk, OptimizationResult, OptimizationRun, RunStatus
from marketdata.models import Exchange
from marketdata.services import instrument_ensure
from tests.backtests.support import store_hourly_candles
from tests.factories import UserFactory
from tradeapp.db import is_transient, retry_transient

START = datetime(2025, 1, 1, tzinfo=UTC)
BARS = 600
SPACE = {"fast": list(range(4, 14)), "slow": list(range(30, 60))}  # 300 combinations: 6 chunks
State = OptimizationChunk.State


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=BARS, seed=5)
    return inst


@pytest.fixture
def sent(monkeypatch) -> list[tuple[int, list[int]]]:
    """The chunk messages the services send (run id, chunk indexes), kept from the broker."""
    messages: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(services, "_send_chunks", lambda run, idx: messages.append((run, idx)))
    return messages


@pytest.fixture
def fanned_out(instrument, settings, sent) -> OptimizationRun:
    """A grid search started as a worker would start it."""
    settings.TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT = 2
    run = services.optimization_create(
        user=UserFactory(), strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(hours=BARS), method="grid", space=SPACE,
        enqueue=False,
    )  # fmt: skip
    services.optimization_execute(run.pk)
    return OptimizationRun.objects.get(pk=run.pk)


def states(run: OptimizationRun) -> list[str]:
    return list(run.chunks.order_by("index").values_list("state", flat=True))


def test_a_search_keeps_only_a_few_chunks_in_flight_and_each_finished_chunk_sends_the_next(
    fanned_out, sent
):
    run = fanned_out
    assert (run.status, run.chunks_total, run.combinations) == (RunStatus.RUNNING, 6, 300)
    assert states(run) == ["sent", "sent", "pending", "pending", "pending", "pending"]
    assert sent == [(run.pk, [0, 1])]
    assert services.optimization_chunk(run.pk, 0, worker="w1") == 50
    assert states(run) == ["done", "sent", "sent", "pending", "pending", "pending"]
    assert sent[-1] == (run.pk, [2])
    for index in range(1, 6):
        services.optimization_chunk(run.pk, index, worker="w1")
    done = OptimizationRun.objects.get(pk=run.pk)
    assert done.status == RunStatus.DONE and done.results.count() == 300
    assert set(states(done)) == {"done"}
    assert all(c.sends == 1 for c in done.chunks.all())
    # A chunk delivered again after it stored its rows stores nothing.
    assert services.optimization_chunk(run.pk, 0, worker="w2") == 0
    assert done.results.count() == 300


def test_a_lost_lock_race_while_storing_a_chunk_is_retried_not_a_failed_run(
    fanned_out, monkeypatch
):
    """The run that "failed for good with database is locked": the write is tried again."""
    real = OptimizationResult.objects.bulk_create
    failures = []

    def busy_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(OptimizationResult.objects, "bulk_create", busy_once)
    assert services.optimization_chunk(fanned_out.pk, 0, worker="w1") == 50
    run = OptimizationRun.objects.get(pk=fanned_out.pk)
    assert failures == [1] and run.status == RunStatus.RUNNING and run.error == ""
    assert run.chunks_done == 1 and run.results.count() == 50


def test_the_watchdog_sends_one_quiet_chunk_again_and_fails_the_run_once_its_sends_are_used_up(
    fanned_out, settings, sent
):
    run = fanned_out
    services.optimization_chunk(run.pk, 0, worker="w1")
    # Chunk 1 started on a worker that died: quiet for longer than the stale limit, while the
    # run itself beat just now (another chunk of it is alive).
    quiet = datetime.now(UTC) - timedelta(seconds=settings.TRADEAPP_RUN_STALE_AFTER + 1)
    run.chunks.filter(index=1).update(state=State.RUNNING, heartbeat_at=quiet, worker="dead")
    OptimizationRun.objects.filter(pk=run.pk).update(heartbeat_at=datetime.now(UTC))
    assert services.runs_recover_stale() == {"requeued": 1, "failed": 0}
    lost = run.chunks.get(index=1)
    assert (lost.state, lost.sends) == (State.SENT, 2) and sent[-1] == (run.pk, [1])
    # Alive chunks and a chunk sent a moment ago are left alone.
    assert services.runs_recover_stale() == {"requeued": 0, "failed": 0}
    # Its worker dies on every send: once its sends are used up, the run fails with the reason.
    run.chunks.filter(index=1).update(
        state=State.RUNNING, heartbeat_at=quiet, sends=services.max_attempts()
    )
    assert services.runs_recover_stale() == {"requeued": 0, "failed": 1}
    failed = OptimizationRun.objects.get(pk=run.pk)
    assert failed.status == RunStatus.FAILED
    assert failed.error.startswith("worker lost: chunk 1 had no sign of life since ")


def test_the_watchdog_finishes_a_search_whose_chunks_are_all_stored(fanned_out):
    """The worker storing the last chunk died before it ranked the rows."""
    for index in range(6):
        services.optimization_chunk(fanned_out.pk, index, worker="w1")
    OptimizationRun.objects.filter(pk=fanned_out.pk).update(
        status=RunStatus.RUNNING, best_parameters={}, heartbeat_at=START
    )
    assert services.runs_recover_stale() == {"requeued": 0, "failed": 0}
    done = OptimizationRun.objects.get(pk=fanned_out.pk)
    assert done.status == RunStatus.DONE and done.best_parameters


# --- tradeapp.db.retry_transient ----------------------------------------------------------------


def failing(times: int, exc: Exception):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "stored"

    return fn, calls


def postgres_error(cls: type[Exception]) -> OperationalError:
    wrapped = OperationalError(str(cls.__name__))
    wrapped.__cause__ = cls("server says: try again")
    return wrapped


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("database is locked"),
        postgres_error(psycopg.errors.SerializationFailure),
        postgres_error(psycopg.errors.DeadlockDetected),
    ],
    ids=["sqlite-locked", "pg-serialization", "pg-deadlock"],
)
def test_transient_errors_are_retried(exc, transactional_db):
    fn, calls = failing(2, exc)
    assert is_transient(exc)
    assert retry_transient(fn, first_wait=0.001) == "stored" and len(calls) == 3


def test_other_errors_the_last_failure_and_an_outer_transaction_are_not_retried(
    transactional_db,
):
    fn, calls = failing(1, IntegrityError("UNIQUE constraint failed"))
    with pytest.raises(IntegrityError):
        retry_transient(fn, first_wait=0.001)
    assert len(calls) == 1
    fn, calls = failing(5, OperationalError("database is locked"))
    with pytest.raises(OperationalError):
        retry_transient(fn, attempts=3, first_wait=0.001)
    assert len(calls) == 3
    fn, calls = failing(1, OperationalError("database is locked"))
    with pytest.raises(DatabaseError), transaction.atomic():
        retry_transient(fn, first_wait=0.001)  # the outer transaction is broken: its owner retries
    assert len(calls) == 1
