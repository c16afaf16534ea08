"""Stored optimisations: a sweep fanned out as a Celery group over two real workers, walk-forward
in a worker, validation and cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backtests import services
from backtests.models import OptimizationRun, RunStatus
from backtests.optimize import grid_search
from marketdata.models import Exchange
from marketdata.selectors import candles_frame
from marketdata.services import instrument_ensure
from strategies.base import StrategyParameterError
from tests.backtests.support import store_hourly_candles
from tests.factories import StaffUserFactory
from tests.support import eventually

START = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = 3_600_000
BARS = 20_000


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="ETH/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=BARS, seed=9)
    return inst


@pytest.fixture
def owner(transactional_db):
    return StaffUserFactory()


def submit(owner, instrument, **fields) -> OptimizationRun:
    run = OptimizationRun(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(hours=BARS), **fields,
    )  # fmt: skip
    return services.optimization_submit(run=run)


def finished(run_id: int, timeout: float = 240) -> OptimizationRun:
    return eventually(
        lambda: OptimizationRun.objects.filter(pk=run_id, status__in=["done", "failed"]).first(),
        timeout=timeout, message=f"optimisation {run_id} finishes",
    )  # fmt: skip


def test_grid_optimisation_fans_out_over_two_workers(
    instrument, owner, celery_worker, second_celery_worker
):
    grid = {"fast": list(range(2, 22)), "slow": list(range(25, 125, 5))}  # 400 combinations
    run = submit(owner, instrument, method="grid", space=grid, objective="sharpe")
    assert run.combinations == 400
    done = finished(run.pk)
    assert done.status == RunStatus.DONE, done.error
    assert done.chunks_total == done.chunks_done == 400 // services.CHUNK_SIZE
    results = list(done.results.all())
    assert len(results) == 400
    assert {r.chunk for r in results} == set(range(done.chunks_total))
    # The chunks ran on both worker processes.
    assert {r.worker for r in results} == {celery_worker.hostname, second_celery_worker.hostname}

    # Combined, they give what an in-process grid search gives.
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h")
    local = grid_search(frame, "sma_crossover", grid, n_jobs=1, objective="sharpe")
    assert done.best_parameters == local.best
    assert done.best_metrics["sharpe"] == pytest.approx(float(local.results["sharpe"].iloc[0]))
    assert done.data_bars == BARS and done.data_hash == services.data_hash(frame)


def test_walk_forward_optimisation_runs_in_a_worker(instrument, owner, celery_worker):
    run = submit(
        owner, instrument, method="walk_forward", space={"fast": [5, 10], "slow": [30, 60]},
        train_bars=4_000, test_bars=2_000,
    )  # fmt: skip
    done = finished(run.pk)
    assert done.status == RunStatus.DONE, done.error
    windows = done.walk_forward["windows"]
    assert len(windows) == (BARS - 4_000) // 2_000
    assert len(done.walk_forward["equity"]) == 2_000 * len(windows)
    assert all(w["parameters"]["fast"] in (5, 10) for w in windows)
    assert "total_return" in done.best_metrics


def test_optimisation_refuses_bad_spaces(instrument, owner):
    with pytest.raises(StrategyParameterError, match="speed"):
        submit(owner, instrument, method="grid", space={"speed": [1, 2]})
    with pytest.raises(ValueError, match="no valid combination"):
        submit(owner, instrument, method="grid", space={"fast": [50], "slow": [20]})
    with pytest.raises(ValueError, match="train_bars"):
        submit(owner, instrument, method="walk_forward", space={"fast": [5], "slow": [20]})
    assert not OptimizationRun.objects.exists()


def test_cancelled_optimisation_runs_no_chunk(instrument, owner):
    run = OptimizationRun.objects.create(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(hours=BARS), space={"fast": [5], "slow": [20]},
        status=RunStatus.RUNNING, chunks_total=1,
    )  # fmt: skip
    assert services.run_cancel(run=run)
    assert services.optimization_chunk(run.pk, 0, [{"fast": 5, "slow": 20}]) == 0
    assert not run.results.exists()
