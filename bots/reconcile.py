"""Reconciliation of live bots with their exchange: the exchange is the truth about orders.

For one live bot (``reconcile_bot``):

1. every order of ours still active (``pending_submit``, ``open``, ``partially_filled``,
   ``unknown``) is looked up on the exchange by its ``client_order_id``: found, its status and
   fills are adopted (``CcxtBroker.apply``); not found, it stays as it is during the grace
   period (``GRACE``: a request may still be on its way), and is ``rejected`` with reason
   "not on exchange" after it;
2. the exchange's recent orders carrying this bot's client id prefix that we have no row for
   (a crash between sending and writing) are adopted as new rows, with their fills;
3. success sets ``Bot.reconciled_at``: a live bot trades only after one since it started.

A failure (exchange unreachable, bad credentials) changes nothing and is recorded as a
``BotEvent``, as are reconciliations that settled or adopted something and the first after a
start. ``reconcile_all`` (the ``bots.reconcile`` task, on the beat schedule) runs it for every
live bot that is not stopped or still has active orders.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import ccxt
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from bots.brokers import BrokerError
from bots.live import GRACE, Answer, CcxtBroker
from bots.models import Bot, BotEvent, Order
from marketdata.services import ms_to_datetime, to_decimal
from tradeapp.events import publish_on_commit

logger = logging.getLogger(__name__)

ADOPT_LIMIT = 500  # the exchange's most recent orders scanned for ones we do not know
REASONS = {"sl": "stop_loss", "ts": "trailing_stop", "tp": "take_profit"}


@dataclass
class Outcome:
    settled: int = 0  # active orders whose status changed
    adopted: int = 0  # exchange orders we had no row for
    waiting: int = 0  # active orders still unsettled (open on the exchange, or within grace)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def client_prefix(bot_id: int) -> str:
    """The start of every ``client_order_id`` of bot ``bot_id`` (``Order.make_client_order_id``)."""
    return f"tb{bot_id}-"


def reconcile_bot(
    bot: Bot, *, broker: CcxtBroker | None = None, grace: timedelta = GRACE
) -> Outcome:
    """Reconcile ``bot`` (the module docstring). Never raises for exchange or broker errors:
    they are in the returned ``Outcome`` and a ``BotEvent``."""
    first = bot.reconciled_at is None
    outcome = Outcome()
    try:
        broker = broker or CcxtBroker(bot)
        _settle(bot, broker, grace, outcome)
        _adopt(bot, broker, outcome)
    except (ccxt.BaseError, BrokerError) as exc:
        outcome.error = broker.error_text(exc) if broker is not None else str(exc)
        logger.warning("bot %s: reconciliation failed: %s", bot.pk, outcome.error)
        _event(bot, BotEvent.Kind.RECONCILE_FAILED, f"reconciliation failed: {outcome.error}",
               outcome)  # fmt: skip
        return outcome
    now = timezone.now()
    Bot.objects.filter(pk=bot.pk).update(reconciled_at=now)
    bot.reconciled_at = now
    if first or outcome.settled or outcome.adopted:
        message = (
            f"reconciled: {outcome.settled} settled, {outcome.adopted} adopted, "
            f"{outcome.waiting} waiting"
        )
        _event(bot, BotEvent.Kind.RECONCILED, message, outcome)
    return outcome


def _settle(bot: Bot, broker: CcxtBroker, grace: timedelta, outcome: Outcome) -> None:
    now = timezone.now()
    for order in Order.objects.filter(bot=bot, status__in=Order.ACTIVE).order_by("id"):
        answer = broker.lookup(order)
        if answer is None:
            if now - order.created_at >= grace:
                broker.mark(order.pk, Order.Status.REJECTED, "not on exchange")
                outcome.settled += 1
            else:
                outcome.waiting += 1
            continue
        status = broker.apply(order.pk, answer)
        if status != order.status:
            outcome.settled += 1
        if status in Order.ACTIVE:
            outcome.waiting += 1


def _adopt(bot: Bot, broker: CcxtBroker, outcome: Outcome) -> None:
    prefix = client_prefix(bot.pk)
    orders = broker.client.fetch_orders(broker.symbol, limit=ADOPT_LIMIT)
    ours = [o for o in orders if str(o.get("clientOrderId") or "").startswith(prefix)]
    if not ours:
        return
    known = set(
        Order.objects.filter(client_order_id__in=[o["clientOrderId"] for o in ours]).values_list(
            "client_order_id", flat=True
        )
    )
    for data in ours:
        client_id = data["clientOrderId"]
        if client_id in known:
            continue
        order = Order.objects.create(
            bot=bot, client_order_id=client_id, side=data["side"], type=Order.Type.MARKET,
            reason=_reason(client_id), time=_time(client_id, data),
            quantity=to_decimal(float(data["amount"])) if data.get("amount") else None,
            status=Order.Status.UNKNOWN,
            error="adopted from the exchange",
        )  # fmt: skip
        broker.apply(order.pk, Answer(data, broker.trades_of(data)))
        outcome.adopted += 1


def _reason(client_id: str) -> str:
    code = client_id.rsplit("-", 1)[-1]
    return REASONS.get(code[1:], "signal")


def _time(client_id: str, data: dict[str, Any]) -> Any:
    try:
        return ms_to_datetime(int(client_id.split("-")[1]))
    except (IndexError, ValueError):
        return ms_to_datetime(int(data.get("timestamp") or 0))


def _event(bot: Bot, kind: str, message: str, outcome: Outcome) -> None:
    data = asdict(outcome)
    BotEvent.objects.create(bot=bot, kind=kind, message=message, data=data)
    publish_on_commit(
        f"trade_updates:{bot.pk}",
        {"type": "bot.reconciled" if outcome.ok else "bot.reconcile_failed", "bot_id": bot.pk,
         "message": message, **data},
    )  # fmt: skip


def reconcile_all() -> dict[str, int]:
    """Reconcile every live bot that is not stopped or has active orders (nothing while live
    trading is off). Returns counts of bots reconciled and failed."""
    counts = {"bots": 0, "failed": 0}
    if not settings.TRADEAPP_LIVE_TRADING:
        return counts
    bots = (
        Bot.objects.filter(mode=Bot.Mode.LIVE)
        .filter(~Q(status=Bot.Status.STOPPED) | Q(orders__status__in=Order.ACTIVE))
        .select_related("account__exchange", "instrument")
        .distinct()
        .order_by("pk")
    )
    for bot in bots:
        outcome = reconcile_bot(bot)
        counts["bots"] += 1
        counts["failed"] += not outcome.ok
    return counts
