"""Live execution through ccxt: ``CcxtBroker``.

Allowed only when ``settings.TRADEAPP_LIVE_TRADING`` is on and the bot is in live mode, on an
exchange account of a ccxt exchange. The order path, crash-safe at every step:

1. ``submit`` runs inside the caller's transaction: the order row (``pending_submit``, its
   deterministic ``client_order_id``) is written there, and the request is sent only after that
   transaction commits (``transaction.on_commit``). A crash before the commit leaves nothing (the
   redelivered candle decides again); a crash after it leaves a committed row that
   reconciliation settles (``bots.reconcile``). A row is sent at most once, from
   ``pending_submit``; nothing here ever sends it again.
2. The exchange's answer: a fill records ``Fill`` rows and moves the bot's book, position and
   round-trip trades as the paper path does; an exchange refusal (insufficient funds, invalid
   order, bad credentials) is ``rejected`` with its reason; a timeout, a cut connection or any
   answer we cannot read is ``unknown``, never ``rejected``: the exchange may hold the order.
3. A live bot sends nothing before its first successful reconciliation since it started
   (``Bot.reconciled_at``), nor while an earlier order of it is unsettled; such an order is
   ``rejected`` without being sent, and its signal's decision log says why.

Stops (``CcxtBroker.on_candle``): on each closed candle, while the bot's ledger holds a position,
the stop-loss, take-profit and trailing stop are checked against the candle's high and low by
the paper broker's own rule (``paper.stop_exit``: the stop first when both could trigger), and
the trailing extreme takes in the high when none triggers. A triggered level becomes a market
sell of the whole position through the path above (its ``client_order_id`` carries the reason:
``tb{bot}-{close ms}-ssl``/``-sts``/``-stp``), recorded as it fills: at the exchange's price,
not at the level, with the exit reason on the ``Trade``. A candle seen again finds its exit
already placed and sends nothing. While an earlier order is unsettled (or before the first
reconciliation) the exit is not sent: a ``stop_deferred`` ``BotEvent`` (and a ``stop.deferred``
event) records it once per candle, and the stop stays triggered: the first candle that may send
finds it armed (while the ledger still holds that position and no exit went out since) and
places the exit at market even if the price has come back above the level meanwhile; a
position the unsettled order turns out to have closed is flat, and nothing is sent.

The bot's ``paper_book`` is its ledger in live mode too: the allocated capital as cash, the
position as the exchange filled it. It sizes entries exactly as in paper mode (with
``Bot.fee_in_base`` a buy spends the whole committed cash: the exchange takes its fee from the
coin bought).

The exchange's fee and quantity rules (``exchange_rules``, ``_book``):

* each fill's fee is recorded as the exchange charged it (``Fill.fee_cost`` in
  ``fee_currency``: the quote currency, the coin bought, or a third asset such as BNB) and
  valued in the quote currency at the fill (``Fill.fee``; a third asset at its 1m close);
* the position is the coin the account received (a buy's quantity less a fee taken in the
  coin), the cash moves by what the quote balance moved, a third-asset fee is in the trade's
  P&L and the book's ``other_fees`` (the equity subtracts it);
* an exit sells what the bot holds, rounded down to ccxt's amount precision (the lot step);
  what cannot be sold (below the lot step, the minimum amount or notional) is dust: kept apart
  on the book and the position, recorded (a ``dust`` ``BotEvent``, the decision log's
  ``exchange_minimum`` check), never sent, never blocking an entry; the next entry takes it in.
  An entry below the minimum is refused before it is sent, with the reason.

Credentials are decrypted only to build the ccxt client; every error text recorded or logged
passes through ``redact`` first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import ccxt
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bots import paper
from bots.brokers import (
    Broker,
    BrokerError,
    CandleResult,
    announce_order,
    fill_json,
    position_fields,
    record_trade,
)
from bots.models import Bot, BotEvent, ExchangeAccount, Fill, Order, Position, Signal
from bots.risk import Check
from marketdata.models import Exchange
from marketdata.providers.ccxt_provider import _merge, rewrite_api_urls
from marketdata.services import datetime_to_ms, ms_to_datetime, to_decimal
from tradeapp.events import publish_on_commit
from tradeapp.pause import pause_point

logger = logging.getLogger(__name__)

# ccxt's request timeout (ms) for live orders, unless the exchange's options set "timeout".
LIVE_TIMEOUT_MS = 10_000
# How long an order of ours may be missing on the exchange before it counts as never sent: its
# request may still be on its way (reconciliation and cancelling both wait this long).
GRACE = timedelta(seconds=60)
TERMINAL = (Order.Status.FILLED, Order.Status.CANCELLED, Order.Status.REJECTED)
CCXT_STATUS = {
    "open": Order.Status.OPEN, "closed": Order.Status.FILLED,
    "canceled": Order.Status.CANCELLED, "cancelled": Order.Status.CANCELLED,
    "expired": Order.Status.CANCELLED, "rejected": Order.Status.REJECTED,
}  # fmt: skip
# Test-only hook, off unless the variable is set: "<point>:<marker file>" makes the first process
# reaching <point> ("submit": order row written, not committed; "sent": the exchange answered,
# nothing recorded) create the marker (holding its pid) and sleep, so that a test can SIGKILL it
# there. Never set in a deployment.
TEST_PAUSE_ENV = "TRADEAPP_TEST_PAUSE_LIVE"

_clients: dict[tuple[Any, ...], ccxt.Exchange] = {}  # this process's clients (markets cached)


def test_pause(point: str) -> None:
    pause_point(TEST_PAUSE_ENV, point)


def redact(text: str, client: ccxt.Exchange | None) -> str:
    """``text`` without the client's API key or secret."""
    for value in (getattr(client, "secret", None), getattr(client, "apiKey", None)):
        if value:
            text = text.replace(value, "***")
    return text


class RedactCredentials(logging.Filter):
    """ccxt logs every request with its headers at DEBUG (the API key among them): take this
    process's credentials out of its records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _clients:
            message = record.getMessage()
            for client in list(_clients.values()):
                message = redact(message, client)
            record.msg, record.args = message, None
        return True


logging.getLogger("ccxt.base.exchange").addFilter(RedactCredentials())


def check_live_allowed(bot: Bot) -> None:
    """Raise ``BrokerError`` unless ``bot`` may trade live (setting, mode, account, exchange)."""
    if not settings.TRADEAPP_LIVE_TRADING:
        raise BrokerError(
            f"bot {bot.pk}: live trading is disabled (set TRADEAPP_LIVE_TRADING=1 to allow it)"
        )
    if bot.mode != Bot.Mode.LIVE:
        raise BrokerError(f"bot {bot.pk} is not in live mode")
    if bot.account_id is None:
        raise BrokerError(f"bot {bot.pk} is in live mode without an exchange account")
    exchange = bot.account.exchange
    if exchange.kind != Exchange.Kind.CCXT or not hasattr(ccxt, exchange.ccxt_id):
        raise BrokerError(
            f"bot {bot.pk}: exchange {exchange.ccxt_id} is not a ccxt exchange, so it cannot "
            "trade live"
        )
    if bot.instrument.exchange_id != exchange.pk:
        raise BrokerError(
            f"bot {bot.pk} trades {bot.instrument} but its account {bot.account.label!r} is on "
            f"{exchange.ccxt_id}"
        )


def client_for(account: ExchangeAccount) -> ccxt.Exchange:
    """The sync ccxt client of ``account`` (one per process and credentials). With the
    exchange's ``api_base_url`` (a local exchange server) its URLs point there, spot markets
    only and no client-side rate limiter, as ``CcxtProvider`` does."""
    exchange = account.exchange
    options = dict(exchange.options or {})
    timeout = int(options.pop("timeout", LIVE_TIMEOUT_MS))
    key = (
        account.pk, account.api_key_encrypted, account.api_secret_encrypted,
        exchange.ccxt_id, exchange.api_base_url, repr(sorted(options.items())), timeout,
    )  # fmt: skip
    client = _clients.get(key)
    if client is not None:
        return client
    if not (account.api_key_encrypted and account.api_secret_encrypted):
        raise BrokerError(f"exchange account {account.label!r} has no API key and secret")
    own: dict[str, Any] = {}
    if exchange.api_base_url:
        own = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
               "fetchMargins": False}  # fmt: skip
    client = getattr(ccxt, exchange.ccxt_id)(
        {
            "apiKey": account.api_key(), "secret": account.api_secret(), "timeout": timeout,
            "enableRateLimit": not exchange.api_base_url, "options": _merge(own, options),
        }
    )  # fmt: skip
    if exchange.api_base_url:
        client.urls["api"] = rewrite_api_urls(client.urls["api"], exchange.api_base_url)
    _clients[key] = client
    return client


@dataclass
class Answer:
    """An exchange order (ccxt's order structure) and its trades (ccxt trade structures)."""

    order: dict[str, Any]
    trades: list[dict[str, Any]]


class CcxtBroker(Broker):
    """The live broker of one bot (module docstring)."""

    def __init__(self, bot: Bot) -> None:
        check_live_allowed(bot)
        self.bot = bot
        self.symbol = bot.instrument.symbol
        self._client: ccxt.Exchange | None = None

    def __repr__(self) -> str:
        return f"<CcxtBroker bot={self.bot.pk} {self.symbol}>"

    @property
    def client(self) -> ccxt.Exchange:
        if self._client is None:
            self._client = client_for(self.bot.account)
        return self._client

    def error_text(self, exc: BaseException) -> str:
        return redact(f"{type(exc).__name__}: {exc}", self._client)

    # --- submit -----------------------------------------------------------------------------
    def submit(self, order: Order) -> Order:
        if order.pk is None:  # a caller that defers its inserts: this row is written now
            order.save(force_insert=True)
        refusal = self._refusal(order)
        if refusal is not None:
            order.status = Order.Status.REJECTED
            order.error = f"not sent: {refusal}"
            order.save(update_fields=["status", "error", "updated_at"])
            announce_order(order)
            transaction.on_commit(lambda: _signal_not_executed(order.pk, refusal), robust=True)
            return order
        announce_order(order)
        test_pause("submit")
        transaction.on_commit(lambda: self.send(order.pk))
        return order

    def _refusal(self, order: Order | None) -> str | None:
        """Why an order (``order``, or one about to be written) may not be sent now, or None."""
        if self.bot.reconciled_at is None:
            return "the live bot has not reconciled with the exchange since it started"
        earlier = (
            Order.objects.filter(bot_id=self.bot.pk, status__in=Order.ACTIVE)
            .exclude(pk=None if order is None else order.pk).order_by("id").first()
        )  # fmt: skip
        if earlier is not None:
            return f"order {earlier.client_order_id} is still {earlier.status}"
        return None

    def send(self, order_id: int) -> None:
        """Send a committed ``pending_submit`` order (after commit, outside any transaction)
        and record the answer."""
        order = Order.objects.get(pk=order_id)
        if order.status != Order.Status.PENDING_SUBMIT:
            return
        try:
            answer = self._create(order)
        except ccxt.InvalidOrder as exc:
            if "duplicate order" in str(exc).lower():
                # The exchange holds an order with this client id: it went out before.
                self.mark(order_id, Order.Status.UNKNOWN, self.error_text(exc))
            else:
                self.mark(order_id, Order.Status.REJECTED, self.error_text(exc))
            return
        except ccxt.NetworkError as exc:  # timeout, cut connection, 5xx: it may have arrived
            self.mark(order_id, Order.Status.UNKNOWN, self.error_text(exc))
            return
        except ccxt.ExchangeError as exc:  # refused: funds, credentials, symbol, filters
            self.mark(order_id, Order.Status.REJECTED, self.error_text(exc))
            return
        except Exception as exc:  # noqa: BLE001 - an unreadable answer: reconciliation decides
            logger.warning("order %s: unreadable answer: %s", order_id, self.error_text(exc))
            self.mark(order_id, Order.Status.UNKNOWN, self.error_text(exc))
            return
        test_pause("sent")
        self.apply(order_id, answer)

    def _create(self, order: Order) -> Answer:
        client, params = self.client, {"newClientOrderId": order.client_order_id}
        client.load_markets()
        if order.side == Order.Side.BUY:
            cost = float(client.cost_to_precision(self.symbol, self.buy_cost(order)))
            data = client.create_market_buy_order_with_cost(self.symbol, cost, params)
        else:
            amount = float(client.amount_to_precision(self.symbol, float(order.quantity)))
            data = client.create_order(self.symbol, "market", "sell", amount, None, params)
        return Answer(data, list(data.get("trades") or []))

    def buy_cost(self, order: Order) -> float:
        """The quote amount a buy spends: the backtester's sizing. The committed cash pays the
        notional and a fee in the quote currency; when the exchange takes the fee from the coin
        bought (``Bot.fee_in_base``) it pays the notional alone."""
        if self.bot.fee_in_base:
            return float(order.quote_amount)
        return float(order.quote_amount) / (1.0 + self.bot.fee)

    # --- the exchange's amount rules --------------------------------------------------------
    def market(self) -> dict[str, Any]:
        """ccxt's market of the bot's symbol (precision and limits), markets loaded once."""
        self.client.load_markets()
        return self.client.market(self.symbol)

    def floor_amount(self, amount: float) -> float:
        """``amount`` rounded down to the market's amount precision (lot step); 0 below it."""
        try:
            return float(self.client.amount_to_precision(self.symbol, amount))
        except ccxt.InvalidOrder:  # ccxt's "amount must be greater than ... precision"
            return 0.0

    def limits(self) -> tuple[float, float, float]:
        """``(lot step, minimum amount, minimum notional)`` of the market, 0 where ccxt's
        market data has none."""
        market = self.market()
        limits = market.get("limits") or {}
        return (
            float((market.get("precision") or {}).get("amount") or 0.0),
            float((limits.get("amount") or {}).get("min") or 0.0),
            float((limits.get("cost") or {}).get("min") or 0.0),
        )

    def minimum_problem(self, amount: float, price: float) -> str | None:
        """Why an order of ``amount`` (already on the lot step) at about ``price`` is below
        the market's minimum amount or notional, or None."""
        step, min_amount, min_cost = self.limits()
        base, quote = self.bot.instrument.base, self.bot.instrument.quote
        if not amount > 0.0:
            return f"below the lot step {step:g} {base}" if step else "nothing to trade"
        if amount < min_amount:
            return f"{amount:.8g} {base} is below the minimum amount {min_amount:g} {base}"
        if amount * price < min_cost:
            return (
                f"notional {amount * price:.8g} {quote} is below the minimum {min_cost:g} {quote}"
            )
        return None

    def exchange_rules(self, order: Order, book: paper.PaperBook, price: float) -> Check | None:
        """Fit ``order`` (not sent yet) to the market's lot step and minimums at about
        ``price``: an exit sells what the bot holds (its dust taken back in) rounded down to
        the lot step; below the minimum the position becomes dust (recorded, never sent, and
        the bot is flat for its next entry). An entry below the minimum is refused. The
        markets unreachable: None (the order goes on; the exchange decides)."""
        base = self.bot.instrument.base
        try:
            self.market()  # the markets loaded: the rounding below reads them
            if order.side == Order.Side.BUY:
                cost = float(self.client.cost_to_precision(self.symbol, self.buy_cost(order)))
                amount = self.floor_amount(cost / price)
                problem = self.minimum_problem(amount, price)
                if problem is not None:
                    return Check("exchange_minimum", False, f"entry not sent: {problem}")
                return Check(
                    "exchange_minimum", True, f"spends {cost:.8g} {self.bot.instrument.quote}"
                )
            book.merge_dust()
            amount = self.floor_amount(book.units)
            problem = self.minimum_problem(amount, price)
        except ccxt.BaseError as exc:
            logger.warning("bot %s: market rules unavailable: %s", self.bot.pk,
                           self.error_text(exc))  # fmt: skip
            return None
        if problem is not None:
            book.to_dust()
            detail = f"dust: {book.dust:.8g} {base} kept, exit not sent ({problem})"
            record_dust(self.bot, detail, book, time_ms=datetime_to_ms(order.time))
            return Check("exchange_minimum", False, detail)
        order.quantity = to_decimal(amount)
        rest = book.units - amount
        detail = f"sells {amount:.8g} {base} (lot step)"
        if rest > 0.0:
            detail += f"; {rest:.8g} {base} below the lot step stays as dust"
        return Check("exchange_minimum", True, detail)

    # --- stops ------------------------------------------------------------------------------
    def on_candle(
        self, bot: Bot, book: paper.PaperBook, *, time_ms: int, candle: tuple[float, ...]
    ) -> CandleResult:
        """The stops of a closed candle (the module docstring), inside the caller's
        transaction, ``book`` being the bot's ledger as locked there. An exit is only placed
        here: its fill, book and trade follow from the exchange's answer after commit, so the
        result is always empty."""
        open_, high, low, _close = candle
        stop = paper.stop_exit(
            book, open_, high, low, stop_loss=bot.stop_loss, take_profit=bot.take_profit,
            trailing_stop=bot.trailing_stop,
        )  # fmt: skip
        if stop is None:
            stop = self._armed_stop(bot, book)
        if stop is None:
            paper.take_in_high(book, high)
            return CandleResult()
        reason, level = stop
        client_order_id = Order.make_client_order_id(bot.pk, time_ms, "sell", reason)
        if Order.objects.filter(client_order_id=client_order_id).exists():
            return CandleResult()  # this candle's exit is placed already (a candle seen again)
        refusal = self._refusal(None)
        if refusal is not None:
            self._defer_stop(bot, reason, level, time_ms, why=refusal, entry_ms=book.entry_ms)
            return CandleResult()
        order = Order(
            bot=bot, client_order_id=client_order_id, side=Order.Side.SELL,
            type=Order.Type.TAKE_PROFIT if reason == "take_profit" else Order.Type.STOP,
            reason=reason, time=ms_to_datetime(time_ms), quantity=to_decimal(book.units),
        )  # fmt: skip
        check = self.exchange_rules(order, book, level)
        if check is not None and not check.passed:
            return CandleResult()  # the position is dust now (recorded): nothing to send
        order.save(force_insert=True)
        logger.info(
            "bot %s: %s at %s in the candle closing at %s: market exit %s",
            bot.pk, reason, level, time_ms, client_order_id,
        )  # fmt: skip
        self.submit(order)
        return CandleResult()

    def _armed_stop(self, bot: Bot, book: paper.PaperBook) -> tuple[str, float] | None:
        """A stop that triggered during the position held now but could not be sent (a
        ``stop_deferred`` event since its entry) and whose exit has not gone out since: it
        stays triggered, whatever the price does meanwhile, until an exit is placed (an exit
        that is then rejected or cancelled arms it again)."""
        if not book.long:
            return None
        deferred = (
            BotEvent.objects.filter(
                bot_id=bot.pk, kind=BotEvent.Kind.STOP_DEFERRED, data__entry_ms=book.entry_ms
            )
            .order_by("time", "id")
            .first()
        )
        if deferred is None:
            return None
        since = ms_to_datetime(int(deferred.data["time_ms"]))
        placed = Order.objects.filter(
            bot_id=bot.pk, side=Order.Side.SELL, time__gte=since,
            status__in=[*Order.ACTIVE, Order.Status.FILLED],
        )  # fmt: skip
        if placed.exists():
            return None
        return str(deferred.data["reason"]), float(deferred.data["level"])

    def _defer_stop(
        self, bot: Bot, reason: str, level: float, time_ms: int, *, why: str, entry_ms: int
    ) -> None:
        """Record (once per candle) a triggered exit that is not sent now."""
        if BotEvent.objects.filter(
            bot_id=bot.pk, kind=BotEvent.Kind.STOP_DEFERRED, data__time_ms=time_ms
        ).exists():
            return
        message = f"{reason} triggered at {level:.8g}, exit not sent: {why}"
        data = {
            "reason": reason, "level": level, "time_ms": time_ms, "why": why,
            "entry_ms": entry_ms,  # the position it belongs to (the ledger's entry stamp)
        }  # fmt: skip
        BotEvent.objects.create(
            bot_id=bot.pk, kind=BotEvent.Kind.STOP_DEFERRED, message=message, data=data
        )
        logger.warning("bot %s: %s", bot.pk, message)
        publish_on_commit(
            f"trade_updates:{bot.pk}",
            {"type": "stop.deferred", "bot_id": bot.pk, "message": message, **data},
        )

    # --- recording --------------------------------------------------------------------------
    def mark(self, order_id: int, status: str, error: str) -> None:
        """Move an active order to ``status`` with ``error`` (no fills)."""
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            if order.status not in Order.ACTIVE:
                return
            order.status, order.error = status, error
            order.submitted_at = order.submitted_at or timezone.now()
            order.save(update_fields=["status", "error", "submitted_at", "updated_at"])
            announce_order(order)

    def apply(self, order_id: int, answer: Answer) -> str:
        """Adopt the exchange's view of an order: its status, new fills, and (when it ends
        filled) the book, position and round trip. Idempotent. Returns the new status."""
        data = answer.order
        trades = self._trades(answer)
        # Fees in a third asset are valued before the locks (a request to the exchange each).
        rates = self._fee_rates(trades)
        with transaction.atomic():
            bot = Bot.objects.select_for_update().get(pk=self.bot.pk)
            order = Order.objects.select_for_update().get(pk=order_id)
            if order.status in TERMINAL:
                return order.status
            filled = Decimal(str(data.get("filled") or 0))
            status = CCXT_STATUS.get(data.get("status") or "", Order.Status.UNKNOWN)
            if status == Order.Status.OPEN and filled > 0:
                status = Order.Status.PARTIALLY_FILLED
            fills = self._new_fills(order, trades, rates)
            order.status = status
            order.exchange_order_id = str(data.get("id") or order.exchange_order_id)
            order.filled_quantity = to_decimal(float(filled))
            if data.get("average"):
                order.price = to_decimal(float(data["average"]))
            order.submitted_at = order.submitted_at or timezone.now()
            if status == Order.Status.REJECTED:
                order.error = order.error or "rejected by the exchange"
            elif status in (Order.Status.OPEN, Order.Status.PARTIALLY_FILLED, *TERMINAL):
                order.error = ""
            if status in TERMINAL and filled > 0:
                order.quantity = order.filled_quantity
                order.filled_at = timezone.now()
            order.save()
            announce_order(order)
            for fill in fills:
                publish_on_commit(
                    f"trade_updates:{bot.pk}",
                    {"type": "fill.created", "bot_id": bot.pk, "order_id": order.pk,
                     "fill": fill_json(fill)},
                )  # fmt: skip
            if status in TERMINAL and filled > 0:
                self._book(bot, order)
            return status

    @staticmethod
    def _trades(answer: Answer) -> list[dict[str, Any]]:
        """The order's trades; without a trade list, one made of the order's totals."""
        if answer.trades or not answer.order.get("filled"):
            return answer.trades
        data = answer.order
        return [{"id": "", "timestamp": data.get("lastTradeTimestamp") or data.get("timestamp"),
                 "amount": data["filled"], "price": data.get("average"),
                 "fee": data.get("fee"), "fees": data.get("fees")}]  # fmt: skip

    def _new_fills(
        self, order: Order, trades: list[dict[str, Any]], rates: dict[tuple[str, int], float]
    ) -> list[Fill]:
        known = set(order.fills.values_list("exchange_trade_id", flat=True))
        if known and trades and not trades[0].get("id"):
            return []  # the order's totals, booked already
        created = []
        for trade in trades:
            trade_id = str(trade.get("id") or "")
            if trade_id in known or not trade.get("amount"):
                continue
            known.add(trade_id)
            stamp = int(trade.get("timestamp") or datetime_to_ms(timezone.now()))
            price = float(trade["price"])
            cost, currency = trade_fee(trade)
            fill = Fill.objects.create(
                order=order, bot_id=order.bot_id, time=ms_to_datetime(stamp), side=order.side,
                quantity=to_decimal(float(trade["amount"])), price=to_decimal(price),
                fee=to_decimal(self._fee_value(cost, currency, price, stamp, rates)),
                fee_cost=to_decimal(cost), fee_currency=currency, exchange_trade_id=trade_id,
            )  # fmt: skip
            created.append(fill)
        return created

    def _fee_value(
        self, cost: float, currency: str, price: float, stamp: int, rates: dict
    ) -> float:
        """A fee in the quote currency: as is in it, at the fill's price in the coin bought,
        at the asset's price then in a third asset (0, logged, when it has none)."""
        instrument = self.bot.instrument
        if not cost or currency in ("", instrument.quote):
            return cost
        if currency == instrument.base:
            return cost * price
        rate = rates.get((currency, stamp - stamp % 60_000))
        if rate is None:
            logger.warning("bot %s: a fee of %s %s has no price in %s: counted as 0", self.bot.pk,
                           cost, currency, instrument.quote)  # fmt: skip
            return 0.0
        return cost * rate

    def _fee_rates(self, trades: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
        """The quote price of each third asset a fee of ``trades`` was paid in, in the minute
        of its fill: the close of that 1m candle (the last price in the running minute),
        through ``ASSET/QUOTE`` or the inverse of ``QUOTE/ASSET``."""
        instrument = self.bot.instrument
        wanted = set()
        for trade in trades:
            cost, currency = trade_fee(trade)
            if cost and currency not in ("", instrument.base, instrument.quote):
                stamp = int(trade.get("timestamp") or datetime_to_ms(timezone.now()))
                wanted.add((currency, stamp - stamp % 60_000))
        rates: dict[tuple[str, int], float] = {}
        for currency, minute in sorted(wanted):
            try:
                rate = self._rate(currency, minute)
            except ccxt.BaseError as exc:
                logger.warning("bot %s: no price for %s: %s", self.bot.pk, currency,
                               self.error_text(exc))  # fmt: skip
                continue
            if rate is not None:
                rates[(currency, minute)] = rate
        return rates

    def _rate(self, currency: str, minute: int) -> float | None:
        client, quote = self.client, self.bot.instrument.quote
        client.load_markets()
        for pair, inverse in ((f"{currency}/{quote}", False), (f"{quote}/{currency}", True)):
            if pair not in client.markets:
                continue
            rows = client.fetch_ohlcv(pair, "1m", since=minute, limit=1)
            # ccxt stamps a candle with its open time: the row of the fill's minute.
            if rows and int(rows[0][0]) == minute and rows[0][4]:
                price = float(rows[0][4])
            else:
                price = float(client.fetch_ticker(pair)["last"])
            return 1.0 / price if inverse else price
        return None

    def _book(self, bot: Bot, order: Order) -> None:
        """Move the bot's ledger by a finished order's fills, as the account moved: the coin
        held is the quantity less a fee taken in it, the cash moves by the quote paid or
        received with a fee taken in it, a third-asset fee (valued at its fill) is in the
        P&L and ``other_fees``. The trade's P&L is money out less money in; its ``fees`` all
        fees in the quote currency, so that ``pnl = units * (exit - entry) - fees``."""
        instrument = self.bot.instrument
        base, quote = instrument.base, instrument.quote
        book = paper.PaperBook.from_dict(bot.paper_book or {"cash": float(bot.capital)})
        fills = list(order.fills.order_by("time", "id"))
        gross = sum(float(f.quantity) for f in fills)
        cost = sum(float(f.quantity) * float(f.price) for f in fills)
        base_fee = sum(float(f.fee_cost) for f in fills if f.fee_currency == base)
        quote_fee = sum(float(f.fee_cost) for f in fills if f.fee_currency in ("", quote))
        other_fee = sum(float(f.fee) for f in fills if f.fee_currency not in ("", base, quote))
        last_ms = datetime_to_ms(fills[-1].time)
        # The average fill price, in decimals: one fill's price exactly as the exchange gave it.
        price = float(sum(f.quantity * f.price for f in fills) / sum(f.quantity for f in fills))
        book.other_fees += other_fee
        if order.side == Order.Side.BUY:
            _book_buy(book, gross, cost, base_fee, quote_fee, other_fee, price, last_ms)
        else:
            self._book_sell(bot, order, book, gross, cost, base_fee, quote_fee, other_fee,
                            price, last_ms)  # fmt: skip
        if book.long and self._unsellable(book.units, price):
            book.to_dust()
            record_dust(
                bot, f"dust: {book.dust:.8g} {base} below the market's minimum order kept "
                "after the fill", book, time_ms=last_ms,
            )  # fmt: skip
        bot.paper_book = book.to_dict()
        bot.cash = to_decimal(book.cash)
        bot.equity = to_decimal(book.equity(price))
        bot.save(update_fields=["paper_book", "risk_state", "cash", "equity", "updated_at"])
        position = position_fields(book, price)
        Position.objects.update_or_create(bot=bot, defaults=position)
        publish_on_commit(
            f"trade_updates:{bot.pk}",
            {"type": "portfolio.updated", "bot_id": bot.pk, "time_ms": last_ms,
             "cash": book.cash, "equity": book.equity(price), "position": book.units,
             "entry_price": book.entry_price if book.long else None, "mark_price": price,
             "unrealized_pnl": float(position["unrealized_pnl"]), "dust": book.dust},
        )  # fmt: skip

    @staticmethod
    def _book_sell(  # noqa: PLR0917 - the order's totals, as _book computed them
        bot: Bot, order: Order, book: paper.PaperBook, gross: float, cost: float,
        base_fee: float, quote_fee: float, other_fee: float, price: float, last_ms: int,
    ) -> None:  # fmt: skip
        """A sell's fills: the quote received less a fee in it to the cash; the round trip
        of the coin that left the position (money out less money in)."""
        out = gross + base_fee  # the coin that left the account (a fee taken in it too)
        book.cash += cost - quote_fee
        if book.long:
            units = min(out, book.units)
            share = units / book.units
            fees = book.entry_fee * share + quote_fee + other_fee + base_fee * price
            pnl = units * (price - book.entry_price) - fees
            closed = paper.ClosedTrade(
                entry_ms=book.entry_ms, exit_ms=last_ms, units=units,
                entry_price=book.entry_price, exit_price=price, fees=fees, pnl=pnl,
                ret=pnl / (book.committed * share), reason=order.reason,
            )  # fmt: skip
            record_trade(order, closed)
            if pnl < 0 and bot.cooldown_candles:
                # The paper path's rule, at the time the loss is known (after the fill): no
                # entry for ``cooldown_candles`` candles.
                bot.risk_state = {**(bot.risk_state or {}), "cooldown_left": bot.cooldown_candles}
            book.units -= units
            book.entry_fee -= book.entry_fee * share
            book.committed -= book.committed * share
            out -= units
            if book.units <= 1e-12:
                book.clear_position()
        if out > 1e-12 and book.dust:  # sold beyond the position: out of the dust
            book.dust = max(book.dust - out, 0.0)

    def _unsellable(self, units: float, price: float) -> bool:
        """A position the exchange would not take as an exit (markets unreachable: False)."""
        try:
            return self.minimum_problem(self.floor_amount(units), price) is not None
        except ccxt.BaseError:
            return False

    # --- exchange queries -------------------------------------------------------------------
    def lookup(self, order: Order) -> Answer | None:
        """The exchange's view of ``order`` by its client id, with its trades; None when the
        exchange does not know it."""
        try:
            data = self.client.fetch_order(
                None, self.symbol, {"origClientOrderId": order.client_order_id}
            )
        except ccxt.OrderNotFound:
            return None
        return Answer(data, self.trades_of(data))

    def trades_of(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if not data.get("filled"):
            return []
        return self.client.fetch_my_trades(self.symbol, params={"orderId": data["id"]})

    def cancel(self, order: Order) -> Order:
        if order.status not in Order.ACTIVE:
            return order
        try:
            data = self.client.cancel_order(
                None, self.symbol, {"origClientOrderId": order.client_order_id}
            )
            self.apply(order.pk, Answer(data, self.trades_of(data)))
        except ccxt.OrderNotFound:
            # Not open there: it filled or ended already, or it never arrived.
            try:
                answer = self.lookup(order)
            except ccxt.BaseError as exc:
                self._note(order, f"cancel: {self.error_text(exc)}")
                return order
            if answer is not None:
                self.apply(order.pk, answer)
            elif timezone.now() - order.created_at < GRACE:
                # Its request may still land (a timeout, a lost answer): cancelled now, a fill
                # that follows would never be recorded. Reconciliation settles it after GRACE.
                self._note(order, "cancel: not on the exchange yet, reconciliation settles it")
            else:
                self.mark(order.pk, Order.Status.CANCELLED, "cancelled: not on the exchange")
        except ccxt.BaseError as exc:
            # Still active: reconciliation settles it.
            self._note(order, f"cancel failed: {self.error_text(exc)}")
        order.refresh_from_db()
        return order

    def _note(self, order: Order, error: str) -> None:
        Order.objects.filter(pk=order.pk).update(error=error, updated_at=timezone.now())

    def reconcile(self, bot: Bot) -> None:
        """The reconciliation at start: the bot trades only once it succeeds (a failure is
        recorded; the beat schedule tries again)."""
        from bots.reconcile import reconcile_bot

        bot.reconciled_at = None
        bot.save(update_fields=["reconciled_at", "updated_at"])
        reconcile_bot(bot, broker=self)


def _book_buy(  # noqa: PLR0917 - the order's totals, as CcxtBroker._book computed them
    book: paper.PaperBook, gross: float, cost: float, base_fee: float, quote_fee: float,
    other_fee: float, price: float, last_ms: int,
) -> None:  # fmt: skip
    """A buy's fills: the coin that reached the account (the quantity less a fee taken in
    it) joins the position at the average fill price, the quote paid and a fee in it leave
    the cash; every fee valued in quote is the entry's fee."""
    held = gross - base_fee
    book.cash -= cost + quote_fee
    # Added to a position already held (an adopted order): the average entry.
    total = book.units + held
    if total > 0.0:
        book.entry_price = (book.units * book.entry_price + held * price) / total
    book.units = total
    book.entry_fee += price * base_fee + quote_fee + other_fee
    book.committed += cost + quote_fee + other_fee
    book.extreme = max(book.extreme, price)
    book.entry_ms = book.entry_ms or last_ms
    book.merge_dust()  # dust held goes out with this position


def trade_fee(trade: dict[str, Any]) -> tuple[float, str]:
    """``(cost, currency)`` of a ccxt trade's fee, as the exchange charged it (``fees`` when
    ccxt lists several: their total in the first non-empty one's currency, the others being
    the same asset in every case the exchanges we know report); ``(0.0, "")`` without one."""
    entries = [f for f in (trade.get("fees") or []) if f and f.get("cost")]
    if not entries and trade.get("fee") and trade["fee"].get("cost"):
        entries = [trade["fee"]]
    if not entries:
        return 0.0, ""
    currency = str(entries[0].get("currency") or "")
    cost = sum(float(f["cost"]) for f in entries if (f.get("currency") or "") == currency)
    return cost, currency


def record_dust(bot: Bot, detail: str, book: paper.PaperBook, *, time_ms: int) -> None:
    """A position that became dust: a ``BotEvent`` and an event on the bot's channel."""
    data = {"dust": book.dust, "time_ms": time_ms}
    BotEvent.objects.create(bot_id=bot.pk, kind=BotEvent.Kind.DUST, message=detail, data=data)
    logger.info("bot %s: %s", bot.pk, detail)
    publish_on_commit(
        f"trade_updates:{bot.pk}", {"type": "position.dust", "bot_id": bot.pk,
                                    "message": detail, **data},
    )  # fmt: skip


def _signal_not_executed(order_id: int, reason: str) -> None:
    """The decision log of an order the live broker refused to send."""
    for row in Signal.objects.filter(orders__pk=order_id):
        row.executed = False
        row.no_order_reason = f"live order not sent: {reason}"
        row.risk_checks = [*row.risk_checks, {"name": "live_ready", "passed": False,
                                              "detail": reason}]  # fmt: skip
        row.save(update_fields=["executed", "no_order_reason", "risk_checks"])
