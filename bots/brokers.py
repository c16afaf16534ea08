"""Brokers: where a bot's orders go. ``PaperBroker`` simulates them exactly as the backtester;
a ``CcxtBroker`` (live, through ccxt) implements the same interface.

The contract, for every broker:

* ``submit(order)``: the ``Order`` row exists (status ``pending_submit``, its deterministic
  ``client_order_id`` committed first for a live broker); the broker sends it and moves it to
  ``open``/``filled``/``rejected``, or ``unknown`` when it cannot tell (never ``rejected`` on a
  timeout).
* ``cancel(order)``: cancel an active order; it ends ``cancelled`` (or ``filled`` if it filled
  first; a live order the exchange does not hold yet stays ``unknown`` during the grace period,
  its request may still land: reconciliation settles it).
* ``reconcile(bot)``: settle ``unknown`` orders and adopt the exchange's view; sets
  ``bot.reconciled_at``. A live bot does not trade before its first reconciliation.
* ``on_candle(...)``: what happens inside a closed candle before its signal is decided. The
  paper broker fills the pending order at the candle's open and applies the stops
  (``bots.paper``); a live broker learns fills from the exchange instead and does nothing here.

Orders, fills and trades are written here, inside the caller's transaction, and announced on
``trade_updates:{bot_id}`` after commit.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, models
from django.utils import timezone

from bots import paper, risk
from bots.models import Bot, Fill, Order, Trade
from marketdata.services import datetime_to_ms, ms_to_datetime, to_decimal
from tradeapp.events import publish_on_commit


class BrokerError(Exception):
    """The broker cannot serve this bot or order."""


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.pk, "client_order_id": order.client_order_id, "side": order.side,
        "type": order.type, "reason": order.reason, "status": order.status,
        "time_ms": datetime_to_ms(order.time), "quantity": _num(order.quantity),
        "quote_amount": _num(order.quote_amount), "price": _num(order.price),
        "error": order.error,
    }  # fmt: skip


def announce_order(order: Order) -> None:
    publish_on_commit(
        f"trade_updates:{order.bot_id}",
        {"type": "order.updated", "bot_id": order.bot_id, "order": order_json(order)},
    )


@dataclass
class CandleResult:
    """What a candle did to the book: the fills and closed trades, in order."""

    fills: list[Fill] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        return any(trade.pnl < 0 for trade in self.trades)


class Broker(abc.ABC):
    """One bot's order path (see the module docstring)."""

    @abc.abstractmethod
    def submit(self, order: Order) -> Order: ...

    @abc.abstractmethod
    def cancel(self, order: Order) -> Order: ...

    @abc.abstractmethod
    def reconcile(self, bot: Bot) -> None: ...

    def on_candle(
        self, bot: Bot, book: paper.PaperBook, *, time_ms: int, candle: tuple[float, ...]
    ) -> CandleResult:
        # Live brokers learn fills from the exchange (reconcile): nothing happens here.
        return CandleResult()

    def exchange_rules(
        self, order: Order, book: paper.PaperBook, price: float
    ) -> risk.Check | None:
        """Fit a decided order (not saved yet) to the exchange's amount rules at about
        ``price``: the check for the decision log, failed when the order may not be sent.
        None: no such rules (paper trading, as the backtester)."""
        return None


def rows_update(model: type[models.Model], objs: list[models.Model], fields: list[str]) -> None:
    """``bulk_update`` of ``fields`` without its one ``CASE WHEN`` per row and field, whose
    building costs about a millisecond per row: one plain UPDATE per row, sent with
    ``executemany`` (a single round trip with psycopg 3's pipeline). ``auto_now`` fields are
    the caller's to set, as with ``bulk_update``."""
    if not objs:
        return
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    sets = ", ".join(f"{quote(field.column)} = %s" for field in columns)
    # Only the model's own quoted names are spliced in; every value is a parameter.
    sql = f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608
    decimal_fields = {field for field in columns if isinstance(field, models.DecimalField)}

    def prep(field: models.Field, value: Any) -> Any:
        # A finite Decimal is what DecimalField's preparation returns for one (a copy): the
        # fast path skips its two to_python calls, the rest of a batch's write is the same.
        if field in decimal_fields and type(value) is Decimal and value.is_finite():
            return connection.ops.adapt_decimalfield_value(
                value, field.max_digits, field.decimal_places
            )
        return field.get_db_prep_save(value, connection)

    params = [
        [prep(field, getattr(obj, field.attname)) for field in columns] + [obj.pk] for obj in objs
    ]
    if connection.vendor == "postgresql":
        _rows_update_values(meta, columns, params)
        return
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _rows_update_values(meta: Any, columns: list[models.Field], params: list[list[Any]]) -> None:
    """PostgreSQL: the same rows in one ``UPDATE ... FROM (VALUES ...)`` per chunk (one
    statement instead of one per row: a fraction of the server's time). Each value is cast to
    its column's type; only the model's own quoted names are spliced in."""
    quote = connection.ops.quote_name
    names = [f"c{i}" for i in range(len(columns))]
    sets = ", ".join(
        f"{quote(field.column)} = v.{name}::{field.cast_db_type(connection)}"
        for field, name in zip(columns, names, strict=True)
    )
    pk = meta.pk
    row = "(" + ", ".join(["%s"] * (len(columns) + 1)) + ")"
    for at in range(0, len(params), 500):
        chunk = params[at : at + 500]
        sql = (
            f"UPDATE {quote(meta.db_table)} AS t SET {sets} "  # noqa: S608
            f"FROM (VALUES {', '.join([row] * len(chunk))}) AS v({', '.join([*names, 'pk'])}) "
            f"WHERE t.{quote(pk.column)} = v.pk::{pk.cast_db_type(connection)}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for values in chunk for value in values])


@dataclass
class PaperWrites:
    """Writes of paper brokers deferred for a batch of bots (``services.process_candle``): rows
    to insert or update in bulk once the batch is decided, and the events to publish once the
    rows have ids, in the order they happened. ``flush`` writes them (orders, fills, trades)."""

    new_orders: list[Order] = field(default_factory=list)
    changed_orders: dict[int, Order] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    # Trades whose entry fill is older than the batch: (trade, entry time), resolved in flush.
    unresolved_entries: list[tuple[Trade, Any]] = field(default_factory=list)
    events: list[tuple[str, Callable[[], dict[str, Any]]]] = field(default_factory=list)

    def extend(self, other: PaperWrites) -> None:
        self.new_orders += other.new_orders
        self.changed_orders.update(other.changed_orders)
        self.fills += other.fills
        self.trades += other.trades
        self.unresolved_entries += other.unresolved_entries
        self.events += other.events

    def flush(self) -> None:
        """Insert the new orders (their ``signal`` saved first by the caller), update the older
        ones, insert fills and trades: a few bulk queries in the caller's transaction."""
        now = timezone.now()
        Order.objects.bulk_create(self.new_orders)
        if self.changed_orders:
            changed = list(self.changed_orders.values())
            for order in changed:
                order.updated_at = now
            rows_update(
                Order,
                changed,
                ["status", "quantity", "filled_quantity", "price", "filled_at", "error",
                 "updated_at"],
            )  # fmt: skip
        Fill.objects.bulk_create(self.fills)
        if self.unresolved_entries:
            bots = {trade.bot_id for trade, _ in self.unresolved_entries}
            times = {when for _, when in self.unresolved_entries}
            entry = {}  # (bot, fill time) -> the newest buy order filled then (record_trade's)
            for bot_id, when, order_id in (
                Fill.objects.filter(bot_id__in=bots, side=Order.Side.BUY, time__in=times)
                .order_by("order_id")
                .values_list("bot_id", "time", "order_id")
            ):
                entry[(bot_id, when)] = order_id
            for trade, when in self.unresolved_entries:
                trade.entry_order_id = entry.get((trade.bot_id, when))
        Trade.objects.bulk_create(self.trades)


_UNSET: Any = object()


class PaperBroker(Broker):
    """Simulated execution with ``bots.paper`` (the backtester's conventions, bit for bit).

    A submitted order waits (``open``) for the next candle's open; stop exits fill inside the
    candle that triggers them and are recorded as filled ``stop``/``take_profit`` orders. Keep
    one instance per bot while processing its candles: it remembers the pending order.

    With ``writes`` (the batch path) nothing touches the database: new and changed rows and
    their events go to ``writes``, and ``submit`` takes an unsaved order; ``pending`` then
    gives the bot's open order, loaded for the whole batch at once.
    """

    def __init__(
        self, bot: Bot, *, writes: PaperWrites | None = None, pending: Order | None = _UNSET
    ) -> None:
        self.bot = bot
        self.writes = writes
        # Buy orders filled by this broker, by fill time (ms): the entries of trades it closes.
        self._entries: dict[int, Order] = {}
        self.pending: Order | None = (
            bot.orders.filter(status=Order.Status.OPEN).order_by("time", "id").first()
            if pending is _UNSET
            else pending
        )

    def _announce(self, order: Order) -> None:
        if self.writes is None:
            announce_order(order)
            return
        snapshot = order_json(order)  # the order as it is now; its id once it has one
        self.writes.events.append(
            (
                f"trade_updates:{order.bot_id}",
                lambda: {
                    "type": "order.updated",
                    "bot_id": order.bot_id,
                    "order": {**snapshot, "id": order.pk},
                },
            )
        )

    def _save(self, order: Order, fields: list[str] | None = None) -> None:
        if self.writes is None:
            order.save(update_fields=fields)
        elif order.pk is not None:
            self.writes.changed_orders[order.pk] = order
        # A new order of the batch is inserted as it ends up.

    def submit(self, order: Order) -> Order:
        order.status = Order.Status.OPEN
        order.submitted_at = timezone.now()
        if self.writes is not None and order.pk is None:
            self.writes.new_orders.append(order)
        else:
            self._save(order, ["status", "submitted_at", "updated_at"])
        self.pending = order
        self._announce(order)
        return order

    def cancel(self, order: Order) -> Order:
        if order.status in Order.ACTIVE:
            order.status = Order.Status.CANCELLED
            self._save(order, ["status", "updated_at"])
            self._announce(order)
        if self.pending is not None and self.pending.pk == order.pk:
            self.pending = None
        return order

    def reconcile(self, bot: Bot) -> None:
        # Nothing to settle: the paper book is the database.
        bot.reconciled_at = timezone.now()
        bot.save(update_fields=["reconciled_at", "updated_at"])

    def on_candle(
        self, bot: Bot, book: paper.PaperBook, *, time_ms: int, candle: tuple[float, ...]
    ) -> CandleResult:
        open_, high, low, _close = candle
        result = CandleResult()
        opts = {"fee": bot.fee, "slippage": bot.slippage}
        # 1. The pending order of an earlier candle fills at this open.
        order, self.pending = self.pending, None
        if order is not None:
            if order.side == Order.Side.BUY:
                filled = paper.buy(
                    book, open_, size=bot.max_position_fraction, time_ms=time_ms,
                    fee_in_base=bot.fee_in_base, **opts,
                )  # fmt: skip
                outcome = (filled, None) if filled else None
            else:
                outcome = paper.sell(book, open_, time_ms=time_ms, reason="signal", **opts)
            self._settle(order, outcome, time_ms, result)
        # 2. Stops inside the candle; 3. the trailing extreme takes in its high.
        stop = paper.stop_exit(
            book, open_, high, low, stop_loss=bot.stop_loss, take_profit=bot.take_profit,
            trailing_stop=bot.trailing_stop,
        )  # fmt: skip
        if stop is not None:
            reason, price = stop
            order = Order(
                bot=bot,
                client_order_id=Order.make_client_order_id(bot.pk, time_ms, "sell", reason),
                side=Order.Side.SELL,
                type=Order.Type.TAKE_PROFIT if reason == "take_profit" else Order.Type.STOP,
                reason=reason,
                time=ms_to_datetime(time_ms),
                quantity=to_decimal(book.units),
                submitted_at=timezone.now(),
            )
            if self.writes is None:
                order.save(force_insert=True)
            else:
                self.writes.new_orders.append(order)
            outcome = paper.sell(book, price, time_ms=time_ms, reason=reason, **opts)
            self._settle(order, outcome, time_ms, result)
        else:
            paper.take_in_high(book, high)
        return result

    def _settle(
        self,
        order: Order,
        outcome: tuple[paper.PaperFill, paper.ClosedTrade | None] | None,
        time_ms: int,
        result: CandleResult,
    ) -> None:
        when = ms_to_datetime(time_ms)
        if outcome is None:
            # Nothing to do at the open (nothing to sell, no cash): the order lapses.
            order.status = Order.Status.CANCELLED
            order.error = "nothing to fill at the open"
            self._save(order, ["status", "error", "updated_at"])
            self._announce(order)
            return
        filled, closed = outcome
        order.status = Order.Status.FILLED
        order.quantity = order.filled_quantity = to_decimal(filled.units)
        order.price = to_decimal(filled.price)
        order.filled_at = timezone.now()
        self._save(order)
        fee = to_decimal(filled.fee)
        if filled.side == Order.Side.BUY and self.bot.fee_in_base:
            # Taken from the coin bought: its amount is the fee's value at the fill price.
            cost, currency = to_decimal(filled.fee / filled.price), self.bot.instrument.base
        else:
            cost, currency = fee, self.bot.instrument.quote
        fill = Fill(
            order=order, bot_id=order.bot_id, time=when, side=filled.side,
            quantity=order.quantity, price=order.price, fee=fee, fee_cost=cost,
            fee_currency=currency,
        )  # fmt: skip
        result.fills.append(fill)
        if filled.side == Order.Side.BUY:
            self._entries[time_ms] = order
        self._announce(order)
        if self.writes is None:
            fill.save(force_insert=True)
            publish_on_commit(
                f"trade_updates:{order.bot_id}",
                {"type": "fill.created", "bot_id": order.bot_id, "order_id": order.pk,
                 "fill": fill_json(fill)},
            )  # fmt: skip
            if closed is not None:
                result.trades.append(record_trade(order, closed))
            return
        self.writes.fills.append(fill)
        self.writes.events.append(
            (
                f"trade_updates:{order.bot_id}",
                lambda: {
                    "type": "fill.created",
                    "bot_id": order.bot_id,
                    "order_id": order.pk,
                    "fill": fill_json(fill),
                },
            )
        )
        if closed is not None:
            trade = trade_row(order, closed, self._entries.get(closed.entry_ms))
            if trade.entry_order is None:
                self.writes.unresolved_entries.append((trade, trade.entry_time))
            self.writes.trades.append(trade)
            self.writes.events.append(
                (
                    f"trade_updates:{order.bot_id}",
                    lambda: {
                        "type": "trade.closed",
                        "bot_id": order.bot_id,
                        "trade": trade_json(trade),
                    },
                )
            )
            result.trades.append(trade)


def trade_row(exit_order: Order, closed: paper.ClosedTrade, entry_order: Order | None) -> Trade:
    """The unsaved ``Trade`` of a round trip that ``exit_order`` closed."""
    return Trade(
        bot_id=exit_order.bot_id, entry_time=ms_to_datetime(closed.entry_ms),
        exit_time=ms_to_datetime(closed.exit_ms), quantity=to_decimal(closed.units),
        entry_price=to_decimal(closed.entry_price), exit_price=to_decimal(closed.exit_price),
        fees=to_decimal(closed.fees), pnl=to_decimal(closed.pnl), return_fraction=closed.ret,
        exit_reason=closed.reason, entry_order=entry_order, exit_order=exit_order,
    )  # fmt: skip


def fill_json(fill: Fill) -> dict[str, Any]:
    """``fee`` valued in the quote currency; ``fee_cost`` in ``fee_currency``, as charged."""
    return {
        "id": fill.pk, "time_ms": datetime_to_ms(fill.time), "side": fill.side,
        "quantity": float(fill.quantity), "price": float(fill.price), "fee": float(fill.fee),
        "fee_cost": float(fill.fee_cost), "fee_currency": fill.fee_currency,
    }  # fmt: skip


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.pk, "side": trade.side, "entry_time_ms": datetime_to_ms(trade.entry_time),
        "exit_time_ms": datetime_to_ms(trade.exit_time), "quantity": float(trade.quantity),
        "entry_price": float(trade.entry_price), "exit_price": float(trade.exit_price),
        "fees": float(trade.fees), "pnl": float(trade.pnl), "return": trade.return_fraction,
        "exit_reason": trade.exit_reason,
    }  # fmt: skip


def position_fields(book: paper.PaperBook, mark: float) -> dict[str, Any]:
    """The ``Position`` row of a bot's book marked at ``mark`` (paper and live alike); a live
    bot's dust is apart from the quantity, its unrealised P&L counted in."""
    unrealized = book.units * (mark - book.entry_price) - book.entry_fee if book.long else 0.0
    if book.dust:
        unrealized += book.dust * (mark - book.dust_price) - book.dust_fee
    return {
        "dust": to_decimal(book.dust),
        "quantity": to_decimal(book.units),
        "entry_price": to_decimal(book.entry_price) if book.long else None,
        "entry_time": ms_to_datetime(book.entry_ms) if book.long else None,
        "mark_price": to_decimal(mark),
        "unrealized_pnl": to_decimal(unrealized),
    }


def record_trade(exit_order: Order, closed: paper.ClosedTrade) -> Trade:
    entry_time = ms_to_datetime(closed.entry_ms)
    entry_order = (
        Order.objects.filter(bot_id=exit_order.bot_id, side=Order.Side.BUY, fills__time=entry_time)
        .order_by("-id")
        .first()
    )
    trade = Trade.objects.create(
        bot_id=exit_order.bot_id, entry_time=entry_time, exit_time=ms_to_datetime(closed.exit_ms),
        quantity=to_decimal(closed.units), entry_price=to_decimal(closed.entry_price),
        exit_price=to_decimal(closed.exit_price), fees=to_decimal(closed.fees),
        pnl=to_decimal(closed.pnl), return_fraction=closed.ret, exit_reason=closed.reason,
        entry_order=entry_order, exit_order=exit_order,
    )  # fmt: skip
    publish_on_commit(
        f"trade_updates:{exit_order.bot_id}",
        {"type": "trade.closed", "bot_id": exit_order.bot_id, "trade": trade_json(trade)},
    )
    return trade


def broker_for(bot: Bot) -> Broker:
    """The broker of ``bot``: paper, or (live mode, with ``TRADEAPP_LIVE_TRADING`` on) the ccxt
    broker (``bots.live``). Raises ``BrokerError`` when live trading is not allowed."""
    if bot.mode == Bot.Mode.PAPER:
        return PaperBroker(bot)
    from bots.live import CcxtBroker  # ccxt is imported only where live trading happens

    return CcxtBroker(bot)
