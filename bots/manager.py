"""The seed's Bot Manager: orchestrates bot execution and state, delegating to ``bots.services``.

The database is the source of truth, so any number of processes (web, every worker of the
``bots`` queue) can each hold a ``BotManager``. ``active_bots`` is this process's view: the
strategy instance of each running bot it has started or processed, by bot id, reused from candle
to candle until the bot's strategy or parameters change; stopping a bot drops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bots import services
from bots.models import Bot
from bots.models import Signal as SignalRow
from strategies.base import BaseStrategy, Signal


class BotManager:
    def __init__(self) -> None:
        self.active_bots: dict[int, BaseStrategy] = {}

    def start_bot(self, bot_id: int, *, actor: Any = None) -> bool:
        """Start a bot instance: True if this call started it (False: it was running).
        Raises ``services.BotStateError`` when it may not start (live trading off, ...)."""
        started = services.bot_start(bot_id=bot_id, actor=actor)
        self.active_bots[bot_id] = services.strategy_for(
            Bot.objects.get(pk=bot_id), self.active_bots
        )
        return started

    def stop_bot(self, bot_id: int, *, actor: Any = None) -> bool:
        """Stop a bot instance and cancel its open orders: True if this call stopped it."""
        self.active_bots.pop(bot_id, None)
        return services.bot_stop(bot_id=bot_id, actor=actor)

    def process_signal(self, bot_id: int, signal: Signal) -> SignalRow:
        """Process a signal and make the trading decision (risk checks, order): the stored
        decision. A candle the bot already decided on is never traded twice."""
        return services.bot_process_signal(bot_id=bot_id, signal=signal)

    def update_bot_state(self, bot_id: int, state: Mapping[str, Any], *, actor: Any = None) -> Bot:
        """Update bot state in the database: settings and/or ``status`` (running, stopped,
        paused), through the same rules and audit rows as start and stop."""
        bot = services.bot_update_state(bot_id=bot_id, state=state, actor=actor)
        if bot.status != Bot.Status.RUNNING:
            self.active_bots.pop(bot_id, None)
        return bot

    def process_candle(self, instrument_id: int, timeframe: str, close_ms: int) -> dict[str, int]:
        """Run every running bot of (instrument, timeframe) up to the candle closing at
        ``close_ms`` (catching up on any it missed)."""
        return services.process_candle(
            instrument_id=instrument_id, timeframe=timeframe, close_ms=close_ms,
            strategies=self.active_bots,
        )  # fmt: skip

    def kill_switch(self, user: Any, *, actor: Any = None) -> dict[str, int]:
        """Stop all of ``user``'s bots and cancel their open orders."""
        result = services.kill_switch(user=user, actor=actor)
        for bot_id in list(self.active_bots):
            self.active_bots.pop(bot_id, None)
        return result
