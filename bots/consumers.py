"""The bots' live views: ``/ws/bot/{bot_id}/status`` and ``/ws/portfolio/{bot_id}``.

Thin, as every consumer (``tradeapp.consumers.StreamConsumer``): sign-in required, the bot's
owner (or staff) only, a snapshot from the database on connect, then the bot's events as they
are published, each with its stream's ``seq``. Anyone else's bot, or one that does not exist,
closes the connection with 4404 (as the REST API answers 404: existence is not disclosed).

- ``status``: ``bot_signals:{bot_id}`` (``signal.created``, ``bot.status``); the snapshot holds
  the bot (status, strategy, instrument, book figures) and its latest decisions.
- ``portfolio``: ``trade_updates:{bot_id}`` (orders, fills, trades, ``portfolio.updated``); the
  snapshot holds cash, equity, the position, the active orders and the latest trades.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from bots import selectors
from bots.models import Bot, Order, Position, Signal, Trade
from bots.services import signal_event
from marketdata.services import datetime_to_ms
from tradeapp import events
from tradeapp.consumers import CLOSE_BAD_REQUEST, CLOSE_NOT_FOUND, StreamConsumer

#: Rows of history a snapshot carries (the pages page further through the REST API).
SNAPSHOT_ROWS = 50


def _number(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def _ms(value: Any) -> int | None:
    return None if value is None else datetime_to_ms(value)


class BotConsumer(StreamConsumer):
    """A route about one bot (``bot_id`` in the URL): its owner and staff only."""

    bot: Bot

    def allowed(self, user: Any) -> bool:
        bot_id = self.scope["url_route"]["kwargs"]["bot_id"]
        bot = Bot.objects.select_related("instrument", "instrument__exchange").filter(pk=bot_id)
        if not user.is_staff:
            bot = bot.filter(owner=user)
        found = bot.first()
        if found is None:
            self.refusal_code = CLOSE_NOT_FOUND
            return False
        self.bot = found
        return True


class BotStatusConsumer(BotConsumer):
    """``/ws/bot/{bot_id}/status``: the decision log and status changes of one bot."""

    def get_streams(self) -> list[str]:
        return [events.BOT_SIGNAL_CHANNEL.format(bot_id=self.bot.pk)]

    def snapshot(self) -> dict[str, Any]:
        bot = Bot.objects.select_related("instrument", "instrument__exchange").get(pk=self.bot.pk)
        latest = Signal.objects.filter(bot=bot).order_by("-time")[:SNAPSHOT_ROWS]
        return {
            "bot": {
                "id": bot.pk,
                "name": bot.name,
                "status": bot.status,
                "status_reason": bot.status_reason,
                "mode": bot.mode,
                "strategy": bot.strategy,
                "parameters": bot.parameters,
                "exchange": bot.instrument.exchange.ccxt_id,
                "symbol": bot.instrument.symbol,
                "timeframe": bot.timeframe,
                "capital": _number(bot.capital),
                "cash": _number(bot.cash),
                "equity": _number(bot.equity),
                "last_processed_ms": _ms(bot.last_processed_at),
            },
            # Oldest first, as the events arrive after them.
            "signals": [signal_event(row) for row in reversed(list(latest))],
        }


class PortfolioConsumer(BotConsumer):
    """``/ws/portfolio/{bot_id}``: the orders, fills, trades and book of one bot."""

    def get_streams(self) -> list[str]:
        return [events.TRADE_UPDATE_CHANNEL.format(bot_id=self.bot.pk)]

    def snapshot(self) -> dict[str, Any]:
        bot = Bot.objects.get(pk=self.bot.pk)
        position = Position.objects.filter(bot=bot).first()
        active = Order.objects.filter(bot=bot, status__in=Order.ACTIVE).order_by("time", "id")
        trades = Trade.objects.filter(bot=bot).order_by("-exit_time", "-id")[:SNAPSHOT_ROWS]
        return {
            "portfolio": {
                "bot_id": bot.pk,
                "capital": _number(bot.capital),
                "cash": _number(bot.cash),
                "equity": _number(bot.equity),
                "time_ms": _ms(bot.last_processed_at),
                "position": _number(position.quantity) if position else 0.0,
                "entry_price": _number(position.entry_price) if position else None,
                "mark_price": _number(position.mark_price) if position else None,
                "unrealized_pnl": _number(position.unrealized_pnl) if position else 0.0,
                "dust": _number(position.dust) if position else 0.0,
            },
            "orders": [
                {
                    "id": order.pk,
                    "client_order_id": order.client_order_id,
                    "side": order.side,
                    "type": order.type,
                    "status": order.status,
                    "time_ms": _ms(order.time),
                    "quantity": _number(order.quantity),
                    "filled_quantity": _number(order.filled_quantity),
                }
                for order in active
            ],
            "trades": [
                {
                    "id": trade.pk,
                    "side": trade.side,
                    "entry_ms": _ms(trade.entry_time),
                    "exit_ms": _ms(trade.exit_time),
                    "quantity": _number(trade.quantity),
                    "entry_price": _number(trade.entry_price),
                    "exit_price": _number(trade.exit_price),
                    "fees": _number(trade.fees),
                    "pnl": _number(trade.pnl),
                    "exit_reason": trade.exit_reason,
                }
                for trade in reversed(list(trades))
            ],
        }


class DashboardConsumer(StreamConsumer):
    """``/ws/dashboard?bots=1,2,3[&all=1]``: the dashboard's bots in one connection.

    ``bots``: the ids of the bots the page shows (at most ``MAX_BOTS``); those the user may not
    see (another user's, for a non-staff user) are left out silently, as if they did not
    exist. Relays ``bot_signals:{id}`` and ``trade_updates:{id}`` of each (``signal.created``,
    ``bot.status``, ``portfolio.updated``, ...), and ``system_events`` for staff. The snapshot
    holds each bot's row (``bots.selectors.dashboard_row``) and the totals of the user's bots
    (everyone's with ``all=1`` for staff, as the page). A bad query closes with 4400.
    """

    MAX_BOTS = 50

    bot_ids: list[int]
    everyone: bool

    def allowed(self, user: Any) -> bool:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        raw = [part for part in query.get("bots", [""])[-1].split(",") if part]
        if len(raw) > self.MAX_BOTS or not all(part.isdigit() for part in raw):
            self.refusal_code = CLOSE_BAD_REQUEST
            return False
        self.everyone = bool(user.is_staff) and query.get("all", ["0"])[-1] == "1"
        ids = {int(part) for part in raw}
        visible = Bot.objects.all() if user.is_staff else Bot.objects.filter(owner=user)
        self.bot_ids = sorted(visible.filter(pk__in=ids).values_list("pk", flat=True))
        return True

    def get_streams(self) -> list[str]:
        streams = []
        for bot_id in self.bot_ids:
            streams.append(events.BOT_SIGNAL_CHANNEL.format(bot_id=bot_id))
            streams.append(events.TRADE_UPDATE_CHANNEL.format(bot_id=bot_id))
        if self.scope["user"].is_staff:
            streams.append(events.SYSTEM_EVENT_CHANNEL)
        return streams

    def snapshot(self) -> dict[str, Any]:
        user = self.scope["user"]
        rows = selectors.bots_visible(user, everyone=True).filter(pk__in=self.bot_ids)
        return {
            "bots": [selectors.dashboard_row(bot) for bot in rows.order_by("pk")],
            "totals": selectors.portfolio_totals(
                selectors.bots_visible(user, everyone=self.everyone)
            ),
        }
