"""Reconciliation of live bots with their exchange: the exchange is the truth about orders.

For one live bot (``reconcile_bot``):

1. every order of ours still active (``pending_submit``, ``open``, ``partially_filled``,
   ``unknown``) is looked up on the exchange by its ``client_order_id``: found, its status and
   fills are adopted (``CcxtBroker.apply``); not found, it stays as it is during the grace
   period (``GRACE``: a request may still be on its way), and is ``rejected`` with reason
   "not on exchange" after it;
2. the exchange's recent orders carrying this bot's client id prefix that we have no row for
   (a crash between sending and writing) are adopted as new rows, with their fills;
3. balances: the bot's booked coin (its position and dust) is compared with the account's
   balance of that coin (free and locked) less what the account's other live bots book of it.
   A difference beyond dust (the market's lot step, minimum amount or minimum notional) is a
   ``balance_mismatch`` event (an error on ``system_events``) and stops the bot's entries
   (``risk_state["balance_mismatch"]``, the ``balance`` risk check) until a reconciliation
   finds them equal again (``balance_resolved``). While any of those bots has an order in
   flight, or a fill is booked during the comparison, it waits for the next reconciliation:
   the balance and the books are moving;
4. success sets ``Bot.reconciled_at``: a live bot trades only after one since it started.

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
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from bots import paper
from bots.brokers import BrokerError, position_fields
from bots.live import GRACE, Answer, CcxtBroker
from bots.models import Bot, BotEvent, Fill, Order, Position
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
    balance: str = ""  # the balance comparison: "ok", "mismatch", or why it was not made
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
        _compare_balance(bot, broker, outcome)
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


def _holdings(bot: Bot, base: str) -> tuple[dict[int, float], bool, int]:
    """What the live bots of ``bot``'s account book of ``base`` (their position and dust, by
    bot), whether any of them has an order in flight, and their newest fill's id."""
    bots = Bot.objects.filter(account_id=bot.account_id, mode=Bot.Mode.LIVE,
                              instrument__base=base)  # fmt: skip
    held = {
        pk: paper.PaperBook.from_dict(book or {"cash": 0.0}).held
        for pk, book in bots.values_list("pk", "paper_book")
    }
    active = Order.objects.filter(bot__in=bots, status__in=Order.ACTIVE).exists()
    newest = Fill.objects.filter(bot__in=bots).aggregate(newest=Max("id"))["newest"] or 0
    return held, active, newest


def _dust_tolerance(broker: CcxtBroker, price: float | None) -> float:
    """The largest difference that is dust: the lot step, the minimum amount, and the
    minimum notional at ``price``, whichever is largest (a hair more for float noise)."""
    step, min_amount, min_cost = broker.limits()
    tolerance = max(step, min_amount)
    if price:
        tolerance = max(tolerance, min_cost / price)
    return tolerance * (1 + 1e-9) + 1e-12


class BalanceError(Exception):
    """The account's balance cannot be compared or adopted now (why)."""


def _account_view(bot: Bot, broker: CcxtBroker) -> tuple[float, float, float]:
    """``(booked, others, account)``: the coin ``bot`` books, what the account's other live
    bots book of it, and the account's balance of it (free and locked), read while nothing
    moves them: ``BalanceError`` while an order is in flight or when a fill is booked during
    the read."""
    base = bot.instrument.base
    before = _holdings(bot, base)
    if before[1]:
        raise BalanceError("an order of the account's bots is in flight")
    balance = broker.client.fetch_balance()
    if _holdings(bot, base) != before:
        raise BalanceError("a fill was booked meanwhile")
    held = before[0]
    others = sum(amount for pk, amount in held.items() if pk != bot.pk)
    account = float((balance.get("total") or {}).get(base) or 0.0)
    return held.get(bot.pk, 0.0), others, account


def _compare_balance(bot: Bot, broker: CcxtBroker, outcome: Outcome) -> None:
    """Step 3 of the module docstring."""
    base = bot.instrument.base
    try:
        booked, others, account = _account_view(bot, broker)
    except BalanceError as exc:
        outcome.balance = f"waiting: {exc}"
        return
    mark = Position.objects.filter(bot_id=bot.pk).values_list("mark_price", flat=True).first()
    tolerance = _dust_tolerance(broker, float(mark) if mark else None)
    difference = account - others - booked
    with transaction.atomic():
        locked = Bot.objects.select_for_update().get(pk=bot.pk)
        state = dict(locked.risk_state or {})
        was = state.get("balance_mismatch")
        if abs(difference) <= tolerance:
            outcome.balance = "ok"
            if was is None:
                return
            state.pop("balance_mismatch")
            kind, severity = BotEvent.Kind.BALANCE_RESOLVED, "info"
            message = (
                f"balance agrees again: the bot books {booked:.8g} {base}, the account holds "
                f"{account:.8g} {base} ({others:.8g} booked by its other bots); entries resume"
            )
        else:
            outcome.balance = "mismatch"
            message = (
                f"balance mismatch: the bot books {booked:.8g} {base} but the account holds "
                f"{account:.8g} {base} of which its other live bots book {others:.8g}: "
                f"{difference:+.8g} {base} beyond dust ({tolerance:.8g}); no entries until "
                "they agree"
            )
            if was is not None and abs(was.get("difference", 0.0) - difference) <= tolerance:
                return  # reported already, unchanged
            kind, severity = BotEvent.Kind.BALANCE_MISMATCH, "error"
            state["balance_mismatch"] = {
                "message": message, "asset": base, "booked": booked, "account": account,
                "other_bots": others, "difference": difference, "tolerance": tolerance,
                "since": timezone.now().isoformat(),
            }  # fmt: skip
        locked.risk_state = state
        locked.save(update_fields=["risk_state", "updated_at"])
        bot.risk_state = state
        data = {"asset": base, "booked": booked, "account": account, "other_bots": others,
                "difference": difference, "tolerance": tolerance}  # fmt: skip
        BotEvent.objects.create(bot_id=bot.pk, kind=kind, message=message, data=data)
        (logger.error if severity == "error" else logger.info)("bot %s: %s", bot.pk, message)
        payload = {"bot_id": bot.pk, "owner_id": bot.owner_id, "severity": severity,
                   "message": message, **data}  # fmt: skip
        publish_on_commit(f"trade_updates:{bot.pk}", {"type": f"bot.{kind}", **payload})
        publish_on_commit("system_events", {"type": f"bot.{kind}", **payload})


def balance_adopt(*, bot_id: int, actor: Any = None) -> str:
    """Resolve a balance mismatch by taking the account's word: the bot books the account's
    balance of its coin less what the account's other live bots book (never below 0). The
    difference is a transfer, not a trade (``PaperBook.transfer``), valued at the exchange's
    last price: the bot's capital moves by that value, so its P&L does not change. Clears the
    mismatch (a ``balance_resolved`` event naming ``actor``). Raises ``BalanceError`` or
    ``BrokerError`` (live trading not allowed) and ccxt errors (exchange unreachable)."""
    bot = Bot.objects.select_related("instrument", "account__exchange").get(pk=bot_id)
    if bot.mode != Bot.Mode.LIVE:
        raise BalanceError("only a live bot books an exchange account's balance")
    broker = CcxtBroker(bot)
    base = bot.instrument.base
    try:
        _, others, account = _account_view(bot, broker)
    except BalanceError as exc:
        raise BalanceError(f"{exc}: try again once it is settled") from None
    price = float(broker.client.fetch_ticker(broker.symbol)["last"])
    target = max(account - others, 0.0)
    with transaction.atomic():
        locked = Bot.objects.select_for_update().get(pk=bot.pk)
        book = paper.PaperBook.from_dict(locked.paper_book or {"cash": float(locked.capital)})
        amount = target - book.held
        capital = locked.capital + to_decimal(amount * price)
        if capital <= 0:
            raise BalanceError(
                f"adopting {amount:+.8g} {base} at {price:.8g} leaves no capital: stop the bot "
                "and create a new one instead"
            )
        book.transfer(amount, price)
        state = dict(locked.risk_state or {})
        state.pop("balance_mismatch", None)
        locked.paper_book, locked.risk_state, locked.capital = book.to_dict(), state, capital
        locked.cash = to_decimal(book.cash)
        locked.equity = to_decimal(book.equity(price))
        locked.save(update_fields=["paper_book", "risk_state", "capital", "cash", "equity",
                                   "updated_at"])  # fmt: skip
        Position.objects.update_or_create(bot=locked, defaults=position_fields(book, price))
        message = (
            f"account balance adopted: {amount:+.8g} {base} at {price:.8g} "
            f"({amount * price:+.2f} {bot.instrument.quote} of capital); the bot now books "
            f"{book.held:.8g} {base}; entries resume"
        )
        data = {"asset": base, "adopted": amount, "price": price, "booked": book.held,
                "account": account, "other_bots": others}  # fmt: skip
        BotEvent.objects.create(
            bot=locked, kind=BotEvent.Kind.BALANCE_RESOLVED, message=message, data=data,
            actor=actor if getattr(actor, "pk", None) else None,
        )  # fmt: skip
        logger.info("bot %s: %s", bot.pk, message)
        payload = {"bot_id": bot.pk, "owner_id": bot.owner_id, "severity": "info",
                   "message": message, **data}  # fmt: skip
        publish_on_commit(f"trade_updates:{bot.pk}", {"type": "bot.balance_resolved", **payload})
        publish_on_commit("system_events", {"type": "bot.balance_resolved", **payload})
    return message


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
