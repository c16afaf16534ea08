"""Celery tasks of the ``backtests`` queue. Thin: decode ids, call the service."""

from __future__ import annotations

from celery import shared_task
from celery.signals import worker_ready

from backtests import services


@shared_task(name="backtests.run", bind=True)
def run_backtest_task(self, run_id: int) -> str | None:
    """Execute a stored BacktestRun; returns its final status."""
    run = services.backtest_execute(run_id, task_id=self.request.id)
    return None if run is None else run.status


@shared_task(name="backtests.optimize", bind=True)
def run_optimization_task(self, run_id: int) -> str | None:
    """Start a stored OptimizationRun: walk-forward here, sweeps fanned out as chunk tasks."""
    run = services.optimization_execute(run_id, task_id=self.request.id)
    return None if run is None else run.status


@shared_task(name="backtests.optimize_chunk", bind=True)
def run_optimization_chunk_task(
    self, run_id: int, index: int, combos: list[dict] | None = None
) -> int:
    """Evaluate one stored chunk of combinations on whichever worker takes it (``combos``:
    carried by messages sent before chunks were stored; unused)."""
    return services.optimization_chunk(run_id, index, worker=self.request.hostname or "")


@shared_task(name="backtests.recover_stale")
def recover_stale_task() -> dict[str, int]:
    """The watchdog of runs whose worker or message was lost (beat, every 15 seconds)."""
    return services.runs_recover_stale()


@worker_ready.connect
def send_unsent_runs(**kwargs: object) -> None:
    """Runs stored while no broker was reachable (the demo's, made before the services start)
    go out when a worker is ready."""
    services.runs_send_unsent()
