"""Wakes the bots when the collector announces a closed candle (``candle_closed``)."""

from __future__ import annotations

from typing import Any

from bots.models import Bot


def on_candle_closed(
    sender: Any, *, instrument_id: int, timeframe: str, close_ms: int, **kwargs: Any
) -> None:
    """Queue ``bots.process_candle`` when a running bot trades this instrument and timeframe."""
    from bots.tasks import process_candle_task

    if Bot.objects.running().filter(instrument_id=instrument_id, timeframe=timeframe).exists():
        process_candle_task.delay(instrument_id, timeframe, int(close_ms))
