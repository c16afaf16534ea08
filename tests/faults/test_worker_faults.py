"""Backtests and optimisations through real Celery worker processes that die mid-run.

* A pool process SIGKILLed mid-run (late acks, reject on worker lost): Celery redelivers the
  message to another worker, which takes the run over and finishes it with the result of an
  uninterrupted run.
* A whole worker SIGKILLed mid-run (main process and pool process: a crashed machine): nobody
  redelivers before the broker's visibility timeout (an hour). The watchdog
  ``backtests.recover_stale`` requeues the run (or the optimisation's lost chunks) and a new
  worker finishes it; once its starts are used up, the run is failed with the reason.

The kill is deterministic: ``backtests.services.TEST_PAUSE_ENV`` makes the first run reaching a
point write its pool process id into a marker file and sleep there. (A pool process SIGKILLed
mid bot-processing, with exactly one order on the exchange: ``tests/bots/test_live_worker.py``.)
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest
from django.apps import apps as django_apps
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from backtests import services
from backtests.engine import run_backtest
from backtests.models import BacktestRun, OptimizationChunk, OptimizationRun, RunStatus
from backtests.optimize import grid_search
from backtests.tasks import recover_stale_task
from marketdata.models import Exchange
from marketdata.selectors import candles_frame
from marketdata.services import instrument_ensure
from tests.backtests.support import store_hourly_candles
from tests.conftest import WorkerProcess, start_worker
from tests.factories import UserFactory
from tests.support import eventually
from tradeapp.celery import app

START = datetime(2025, 1, 1, tzinfo=UTC)
BARS = 1_500  # hourly candles: small data, the simulation takes milliseconds
QUEUE = "backtests"
PARAMS = {"fast": 10, "slow": 30}
GRID = {"fast": list(range(4, 14)), "slow": list(range(30, 40))}  # 100 combinations: 2 chunks


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=BARS, seed=21)
    return inst


@pytest.fixture
def owner(transactional_db):
    return UserFactory()


@dataclass
class Workers:
    """Worker processes of one test, on the ``backtests`` queue, with the pause hook armed."""

    marker: Path
    started: list[WorkerProcess]

    def start(self, n: int = 1) -> list[WorkerProcess]:
        """``n`` more workers, started side by side."""
        with ThreadPoolExecutor(n) as pool:
            new = list(pool.map(lambda _: start_worker(), range(n)))
        self.started += new
        return new

    def paused(self) -> tuple[WorkerProcess, int]:
        """The worker whose run reached the pause, and its pool process id (waits for it)."""
        text = eventually(
            lambda: self.marker.exists() and self.marker.read_text(),
            timeout=60, message="a run reaches the pause",
        )  # fmt: skip
        pid = int(text)
        parent = psutil.Process(pid).ppid()
        return next(w for w in self.started if w.proc.pid == parent), pid

    def other(self, worker: WorkerProcess) -> WorkerProcess:
        (other,) = [w for w in self.started if w is not worker]
        return other


@pytest.fixture
def workers(settings, monkeypatch, redis_server, tmp_path) -> Iterator[Workers]:
    """Workers started by the test consume ``backtests`` alone; workers of other tests stop
    consuming it meanwhile (they have no pause hook), and start again at the end."""
    settings.TRADEAPP_CELERY_QUEUES = [QUEUE]
    others = app.control.cancel_consumer(QUEUE, reply=True, timeout=0.5)
    hosts = [host for reply in others for host in reply]
    state = Workers(tmp_path / "paused", [])
    yield state
    for worker in state.started:  # idle by now: nothing to finish, nothing unacknowledged
        if worker.proc.poll() is None:
            pool = psutil.Process(worker.proc.pid).children(recursive=True)
            worker.proc.kill()
            worker.proc.wait(10)
            for child in pool:
                child.kill()
    if hosts:
        app.control.add_consumer(QUEUE, destination=hosts, reply=True, timeout=1)


def arm(monkeypatch, workers: Workers, point: str) -> None:
    """Workers started from now on pause the first run that reaches ``point``."""
    monkeypatch.setenv(services.TEST_PAUSE_ENV, f"{point}:{workers.marker}")


def kill_whole_worker(worker: WorkerProcess, pool_pid: int) -> None:
    """SIGKILL the worker's main process, then its pool process: nothing is acknowledged,
    rejected or requeued; the message stays unacknowledged in the broker."""
    worker.proc.kill()
    worker.proc.wait(10)
    os.kill(pool_pid, signal.SIGKILL)


def forget_unacked(task_ids: list[str]) -> None:
    """Take the killed worker's unacknowledged messages out of the broker: the suite's Redis
    outlives the test, and the broker would deliver them again after its visibility timeout."""
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for tag, payload in client.hgetall("unacked").items():
            if any(task_id.encode() in payload for task_id in task_ids):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)


def finished(model, pk: int, timeout: float = 90):
    return eventually(
        lambda: model.objects.filter(pk=pk, status__in=list(services.FINISHED)).first(),
        timeout=timeout, message=f"{model.__name__} {pk} finishes",
    )  # fmt: skip


def backtest(owner, instrument) -> BacktestRun:
    return services.backtest_create(
        user=owner, strategy="sma_crossover", parameters=PARAMS, instrument=instrument,
        timeframe="1h", start=START, end=START + timedelta(hours=BARS),
    )  # fmt: skip


def search(owner, instrument, space: dict) -> OptimizationRun:
    return services.optimization_create(
        user=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(hours=BARS), method="grid", space=space,
    )  # fmt: skip


def optimisation(owner, instrument) -> OptimizationRun:
    return search(owner, instrument, GRID)


def assert_same_as_uninterrupted_backtest(run: BacktestRun, instrument) -> None:
    assert run.status == RunStatus.DONE, run.error
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h", start=run.start,
                          end=run.end)  # fmt: skip
    expected = run_backtest(frame, "sma_crossover", PARAMS)
    np.testing.assert_array_equal(
        services.unpack_equity(run.equity_blob).to_numpy(), expected.equity.to_numpy()
    )
    assert run.trades_count == len(expected.trades)
    assert run.data_hash == services.data_hash(frame) and run.progress == 1.0


def assert_same_as_uninterrupted_grid(run: OptimizationRun, instrument) -> None:
    assert run.status == RunStatus.DONE, run.error
    results = list(run.results.all())
    assert len(results) == run.combinations == 100  # each combination once, no chunk twice
    assert run.chunks_done == run.chunks_total == 2
    assert {r.chunk for r in results} == {0, 1}
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h")
    local = grid_search(frame, "sma_crossover", GRID, n_jobs=1, objective=run.objective)
    assert run.best_parameters == local.best


# --- a pool process killed: Celery redelivers ---------------------------------------------------


@pytest.mark.parametrize("kind", ["backtest", "chunk"])
def test_a_pool_process_killed_mid_run_is_redelivered_and_the_run_finishes_the_same(
    instrument, owner, workers, monkeypatch, kind
):
    arm(monkeypatch, workers, kind)
    workers.start(2)
    run = backtest(owner, instrument) if kind == "backtest" else optimisation(owner, instrument)
    first, pid = workers.paused()
    second = workers.other(first)
    model = type(run)
    assert model.objects.get(pk=run.pk).status == RunStatus.RUNNING
    # The worker of the paused run takes no more messages; its pool process dies mid-run: the
    # message goes back to the queue and on to the other worker.
    assert app.control.cancel_consumer(QUEUE, destination=[first.hostname], reply=True)
    os.kill(pid, signal.SIGKILL)

    done = finished(model, run.pk)
    if kind == "backtest":
        assert_same_as_uninterrupted_backtest(done, instrument)
        assert done.attempts == 2  # started on the first worker, taken over on the second
        row = TaskResult.objects.get(task_id=done.task_id)
        assert (row.status, row.worker) == ("SUCCESS", second.hostname)
    else:
        assert_same_as_uninterrupted_grid(done, instrument)
        assert done.attempts == 1  # the chunk was redelivered; the run never restarted
        assert {r.worker for r in done.results.all()} == {second.hostname}
    assert not done.error


# --- a whole worker killed: the watchdog --------------------------------------------------------


def test_a_backtest_of_a_killed_worker_is_requeued_by_the_watchdog_and_finishes(
    instrument, owner, workers, monkeypatch
):
    arm(monkeypatch, workers, "backtest")
    workers.start(2)
    run = backtest(owner, instrument)
    first, pid = workers.paused()
    second = workers.other(first)
    lost_task = BacktestRun.objects.get(pk=run.pk).task_id
    kill_whole_worker(first, pid)
    try:
        # Alive as far as anyone can tell for now: the default timeout leaves it alone.
        assert services.runs_recover_stale() == {"requeued": 0, "failed": 0}
        running = BacktestRun.objects.get(pk=run.pk)
        assert (running.status, running.attempts) == (RunStatus.RUNNING, 1)

        # Past the timeout (zero here): requeued as a new task, which the other worker runs.
        assert services.runs_recover_stale(stale_for=timedelta(0)) == {"requeued": 1, "failed": 0}
        requeued = BacktestRun.objects.get(pk=run.pk)
        assert requeued.status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.DONE)
        assert requeued.task_id != lost_task
        done = finished(BacktestRun, run.pk)
        assert_same_as_uninterrupted_backtest(done, instrument)
        assert done.attempts == 2 and not done.error
        row = TaskResult.objects.get(task_id=done.task_id)
        assert (row.status, row.worker) == ("SUCCESS", second.hostname)

        # The lost message, should the broker deliver it again after its visibility timeout,
        # finds the run finished and changes nothing; the watchdog has nothing left to do.
        assert services.backtest_execute(run.pk, task_id=lost_task) is None
        assert services.runs_recover_stale(stale_for=timedelta(0)) == {"requeued": 0, "failed": 0}
        again = BacktestRun.objects.get(pk=run.pk)
        assert (again.status, again.attempts, again.finished_at) == (
            RunStatus.DONE, 2, done.finished_at,
        )  # fmt: skip
    finally:
        forget_unacked([lost_task])


def test_an_optimisation_whose_worker_was_killed_gets_its_lost_chunks_sent_again(
    instrument, owner, workers, monkeypatch
):
    arm(monkeypatch, workers, "chunk")
    workers.start(2)
    run = optimisation(owner, instrument)
    first, pid = workers.paused()
    kill_whole_worker(first, pid)
    lost = list(TaskResult.objects.filter(task_name="backtests.optimize_chunk")
                .values_list("task_id", flat=True))  # fmt: skip
    try:
        fanned_out = OptimizationRun.objects.get(pk=run.pk)
        assert (fanned_out.status, fanned_out.chunks_total) == (RunStatus.RUNNING, 2)
        # The other worker may be running (or have stored) the other chunk meanwhile; the
        # lost one stored nothing: it is sent again.
        assert services.runs_recover_stale(stale_for=timedelta(0)) == {"requeued": 1, "failed": 0}
        done = finished(OptimizationRun, run.pk)
        assert_same_as_uninterrupted_grid(done, instrument)
        assert done.attempts == 1  # one start: the lost chunk alone was sent again
        assert max(done.chunks.values_list("sends", flat=True)) == 2
        assert {r.worker for r in done.results.all()} == {workers.other(first).hostname}
    finally:
        forget_unacked(lost)


def test_a_run_whose_starts_are_used_up_is_failed_with_the_reason(
    instrument, owner, workers, monkeypatch
):
    arm(monkeypatch, workers, "backtest")
    workers.start()
    run = backtest(owner, instrument)
    first, pid = workers.paused()
    lost_task = BacktestRun.objects.get(pk=run.pk).task_id
    kill_whole_worker(first, pid)
    try:
        assert services.runs_recover_stale(stale_for=timedelta(0), attempts=1) == {
            "requeued": 0, "failed": 1,
        }  # fmt: skip
        failed = BacktestRun.objects.get(pk=run.pk)
        assert failed.status == RunStatus.FAILED and failed.finished_at
        assert failed.error.startswith("worker lost: no sign of life since ")
        assert "after 1 start(s) (at most 1)" in failed.error
        # A late redelivery of the lost message does not revive it.
        assert services.backtest_execute(run.pk, task_id=lost_task) is None
        assert BacktestRun.objects.get(pk=run.pk).status == RunStatus.FAILED
    finally:
        forget_unacked([lost_task])


# --- the rules, without workers -----------------------------------------------------------------


def test_a_redelivery_takes_the_run_over_and_fences_the_start_before_it(instrument, owner):
    run = services.backtest_create(
        user=owner, strategy="sma_crossover", parameters=PARAMS, instrument=instrument,
        timeframe="1h", start=START, end=START + timedelta(hours=BARS), enqueue=False,
    )  # fmt: skip
    # Started under task "a", whose pool process then died: a redelivery of "a" takes it over.
    assert services._start(BacktestRun, run.pk, "a").attempts == 1
    done = services.backtest_execute(run.pk, task_id="a")
    assert (done.status, done.attempts) == (RunStatus.DONE, 2)
    # The first start, had it survived somehow, can no longer fail or finish the run.
    services._fail(BacktestRun, run.pk, RuntimeError("late"), attempt=1)
    assert BacktestRun.objects.get(pk=run.pk).status == RunStatus.DONE

    # A duplicate message (the watchdog's "b") while "a" runs, alive, does nothing.
    other = services.backtest_rerun(run=done)
    BacktestRun.objects.filter(pk=other.pk).update(task_id="a")
    assert services._start(BacktestRun, other.pk, "a").attempts == 1
    assert services.backtest_execute(other.pk, task_id="b") is None
    assert BacktestRun.objects.get(pk=other.pk).attempts == 1
    # A start of a run that lost its worker on every start so far fails it instead.
    BacktestRun.objects.filter(pk=other.pk).update(attempts=services.max_attempts())
    assert services.backtest_execute(other.pk, task_id="a") is None
    lost = BacktestRun.objects.get(pk=other.pk)
    assert lost.status == RunStatus.FAILED and lost.error.startswith("worker lost: ")


def test_a_queued_run_whose_message_was_lost_is_sent_again_and_finishes(
    instrument, owner, workers, settings
):
    """The broker lost the message (a Redis restarted without persistence): once the run has
    been queued longer than the timeout, the watchdog sends it again and a worker runs it."""
    settings.TRADEAPP_RUN_QUEUED_STALE_AFTER = 60
    run = services.backtest_create(
        user=owner, strategy="sma_crossover", parameters=PARAMS, instrument=instrument,
        timeframe="1h", start=START, end=START + timedelta(hours=BARS), enqueue=False,
    )  # fmt: skip
    sent_at = datetime.now(UTC) - timedelta(seconds=30)
    BacktestRun.objects.filter(pk=run.pk).update(task_id="lost", heartbeat_at=sent_at)
    assert services.runs_recover_stale() == {"requeued": 0, "failed": 0}  # 30 s: not yet
    BacktestRun.objects.filter(pk=run.pk).update(heartbeat_at=sent_at - timedelta(seconds=60))
    assert services.runs_recover_stale() == {"requeued": 1, "failed": 0}
    requeued = BacktestRun.objects.get(pk=run.pk)
    assert requeued.status == RunStatus.QUEUED and requeued.task_id != "lost"
    (worker,) = workers.start()
    done = finished(BacktestRun, run.pk)
    assert_same_as_uninterrupted_backtest(done, instrument)
    assert done.attempts == 1 and done.task_id == requeued.task_id
    assert TaskResult.objects.get(task_id=done.task_id).worker == worker.hostname


def test_the_watchdog_is_on_the_beat_schedule(transactional_db):
    # The migration's row (a transactional test's flush removes it: apply it again).
    migration = importlib.import_module("backtests.migrations.0002_run_recovery")
    migration.create_schedule(django_apps, None)
    importlib.import_module("backtests.migrations.0004_research_chunks").every_15_seconds(
        django_apps, None
    )
    task = PeriodicTask.objects.get(name=migration.TASK_NAME)
    assert task.task == recover_stale_task.name == "backtests.recover_stale" and task.enabled
    assert (task.queue, task.interval.every, task.interval.period) == ("default", 15, "seconds")
    assert recover_stale_task.name in app.tasks


# --- one lost chunk, and fair queues --------------------------------------------------------

WIDE_GRID = {"fast": list(range(4, 14)), "slow": list(range(30, 80))}  # 500: 10 chunks


def test_a_lost_chunk_is_sent_again_while_the_other_chunks_go_on(
    instrument, owner, workers, monkeypatch, settings
):
    """A worker dies holding one chunk of a search whose other chunks keep running on another
    worker (so the run itself never goes quiet): the watchdog sends that chunk again once the
    chunk alone has been quiet for the stale limit, not after the whole run's timeout."""
    monkeypatch.setenv("TRADEAPP_RUN_HEARTBEAT", "1")  # the workers' beat, scaled down ...
    settings.TRADEAPP_RUN_STALE_AFTER = 3  # ... with the watchdog's limit (defaults: 10 s, 30 s)
    arm(monkeypatch, workers, "chunk")
    workers.start(2)
    run = search(owner, instrument, WIDE_GRID)
    first, pid = workers.paused()
    lost = run.chunks.get(worker=first.hostname)
    kill_whole_worker(first, pid)
    killed_at = datetime.now(UTC)
    lost_tasks = list(TaskResult.objects.filter(task_name="backtests.optimize_chunk")
                      .values_list("task_id", flat=True))  # fmt: skip
    try:
        resumed = None
        while resumed is None:  # the beat schedule's watchdog, every second here
            services.runs_recover_stale()
            chunk = OptimizationChunk.objects.get(pk=lost.pk)
            if chunk.sends == 2 and chunk.state != OptimizationChunk.State.SENT:
                resumed = datetime.now(UTC)
            assert (datetime.now(UTC) - killed_at).total_seconds() < 60, "not resumed in 60 s"
            time.sleep(0.5)
        print(f"\nkill -> lost chunk running again: {(resumed - killed_at).total_seconds():.1f} s")
        done = finished(OptimizationRun, run.pk)
        assert done.status == RunStatus.DONE, done.error
        assert done.attempts == 1 and done.chunks_done == done.chunks_total == 10
        assert done.results.count() == 500  # every combination once: no chunk stored twice
        assert OptimizationChunk.objects.get(pk=lost.pk).worker == workers.other(first).hostname
        frame = candles_frame(instrument_id=instrument.pk, timeframe="1h")
        local = grid_search(frame, "sma_crossover", WIDE_GRID, n_jobs=1, objective=done.objective)
        assert done.best_parameters == local.best
    finally:
        forget_unacked(lost_tasks)


def test_another_users_backtest_waits_behind_a_few_chunks_not_whole_searches(
    instrument, owner, workers, settings
):
    """One user's two searches (40 chunks) are running when another user submits a backtest:
    it runs after at most the chunks each search keeps in flight, then the searches go on."""
    settings.TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT = 2
    space = {"fast": list(range(4, 14)), "slow": list(range(30, 130))}  # 1,000: 20 chunks
    workers.start()
    searches = [search(owner, instrument, space) for _ in range(2)]
    eventually(
        lambda: all(OptimizationRun.objects.get(pk=s.pk).chunks_done > 0 for s in searches),
        timeout=60, message="both searches have stored a chunk",
    )  # fmt: skip
    other = UserFactory()
    small = backtest(other, instrument)
    done = finished(BacktestRun, small.pk)
    assert done.status == RunStatus.DONE, done.error
    ahead = OptimizationChunk.objects.filter(
        run__in=searches, started_at__gt=done.created_at, started_at__lt=done.started_at
    ).count()
    # The user's searches had at most 2 chunks queued or running in all when the backtest
    # arrived: it waited behind those, not behind 40.
    assert ahead <= settings.TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT, ahead
    wait = (done.started_at - done.created_at).total_seconds()
    print(f"\nsmall backtest's wait behind two searches: {wait:.2f} s ({ahead} chunks ahead)")
    for run in searches:
        assert finished(OptimizationRun, run.pk, timeout=180).status == RunStatus.DONE
    after = OptimizationChunk.objects.filter(run__in=searches, started_at__gt=done.finished_at)
    assert after.count() > 20  # the searches went on after it: it went ahead of most of them
