"""Celery tasks of the ``bots`` queue. Thin: decode ids, call the manager or a service.

Acknowledged late: a worker that dies mid-task leaves the message to be delivered again, and the
processing is idempotent (``bots.services``), so a redelivered candle never trades twice.
"""

from __future__ import annotations

from celery import shared_task

from bots import services
from bots.manager import BotManager

# This worker process's manager: its active_bots keep strategy instances between candles.
manager = BotManager()


@shared_task(name="bots.process_candle", acks_late=True)
def process_candle_task(instrument_id: int, timeframe: str, close_ms: int) -> dict[str, int]:
    """Process the running bots of (instrument, timeframe) up to the candle closing at
    ``close_ms`` (epoch ms)."""
    return manager.process_candle(int(instrument_id), str(timeframe), int(close_ms))


@shared_task(name="bots.catch_up", acks_late=True)
def catch_up_task() -> int:
    """Queue processing for every stream with running bots (beat: bots that fell behind)."""
    return services.catch_up_all()


@shared_task(name="bots.reconcile", acks_late=True)
def reconcile_task() -> dict[str, int]:
    """Reconcile every live bot with its exchange (beat, every minute; ``bots.reconcile``)."""
    from bots.reconcile import reconcile_all

    return reconcile_all()
