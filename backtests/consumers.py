"""Live progress of stored research runs: ``/ws/backtest/{run_id}`` and
``/ws/optimization/{run_id}``.

Thin, as every consumer (``tradeapp.consumers.StreamConsumer``): sign-in required, the run's
owner (or staff) only — anyone else's run, or one that does not exist, closes with 4404 (as the
pages and the API answer 404). The snapshot is the run's status and progress from the database
(``{"type": "snapshot", "streams": {...}, "run": {id, kind, status, progress, error, ...}}``);
then every ``run.progress`` event of ``backtests:{run_id}`` / ``optimizations:{run_id}``
(``{run_id, status, progress}``, with the stream's ``seq``) as the worker publishes it.
"""

from __future__ import annotations

from typing import Any

from backtests.models import BacktestRun, OptimizationRun
from tradeapp import events
from tradeapp.consumers import CLOSE_NOT_FOUND, StreamConsumer


class RunProgressConsumer(StreamConsumer):
    """A route about one run (``run_id`` in the URL) of ``model``, published on ``channel``."""

    model: type[BacktestRun | OptimizationRun]
    channel: str
    refusal_code = CLOSE_NOT_FOUND
    run_id: int

    def allowed(self, user: Any) -> bool:
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        return self.model.objects.owned_by(user).filter(pk=self.run_id).exists()

    def get_streams(self) -> list[str]:
        return [self.channel.format(run_id=self.run_id)]

    def snapshot(self) -> dict[str, Any]:
        run = self.model.objects.get(pk=self.run_id)
        state = {
            "id": run.pk,
            "kind": "backtest" if self.model is BacktestRun else "optimization",
            "status": run.status,
            "progress": run.progress,
            "error": run.error,
        }
        if isinstance(run, OptimizationRun):
            state |= {"chunks_done": run.chunks_done, "chunks_total": run.chunks_total}
        return {"run": state}


class BacktestProgressConsumer(RunProgressConsumer):
    """``/ws/backtest/{run_id}``: one backtest's status and progress."""

    model = BacktestRun
    channel = events.BACKTEST_CHANNEL


class OptimizationProgressConsumer(RunProgressConsumer):
    """``/ws/optimization/{run_id}``: one optimisation's status and progress."""

    model = OptimizationRun
    channel = events.OPTIMIZATION_CHANNEL
