"""The live order lifecycle as a Hypothesis state machine: one live bot trades through its real
entry points (``bot_process_signal``, ``process_candle``'s stop exits, ``bot_stop``/``bot_start``,
``reconcile_bot``) with the real ccxt client against the local exchange server, while the rules
inject the exchange's faults into its order requests: answers lost or late (the exchange applied
the order), requests held on their way past the client's timeout that land later or never,
connection refused, HTTP 429/418/5xx, insufficient balance, partial fills, fills that come
later, and outages spanning several steps.

Checked after every step: client ids are unique (ours and the exchange's); the exchange holds no
order we have no row for; an order whose answer never came is never ``rejected`` (nor any order
the exchange holds), and one whose request is still on its way stays ``unknown``; a finished
order agrees with the exchange; the bot's position (with its dust) is the signed sum of the coin
its finished orders' fills moved (a buy's quantity less a fee taken in the coin, in the run
where the exchange takes it so; an order moves the book when it ends, as ``CcxtBroker.apply``
does) and every fill is one
of the exchange's trades; at most one order (and one request) per decision. After a
reconciliation that reached the exchange: every order matches it (status, filled quantity,
trades) and the account's balance change is the bot's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bots import services
from bots.models import Bot, ExchangeAccount, Fill, Order, Position
from bots.reconcile import GRACE, reconcile_all, reconcile_bot
from marketdata.models import Candle, Exchange
from marketdata.services import instrument_ensure
from tests.bots import live_support
from tests.bots.live_support import SECRET, close_candle
from tests.bots.support import make_bot
from tests.exchange_server import INSUFFICIENT, FaultyBinance

pytestmark = pytest.mark.django_db(transaction=True)

START_USDT = Decimal(50_000)
CAPITAL = 10_000
TIMEOUT_MS = 400  # the client's order timeout here: each timeout fault costs this much
LATE_S = 0.6  # a late answer comes after the client gave up
STATUS = {  # Binance order status -> ours
    "NEW": Order.Status.OPEN, "PARTIALLY_FILLED": Order.Status.PARTIALLY_FILLED,
    "FILLED": Order.Status.FILLED, "CANCELED": Order.Status.CANCELLED,
}  # fmt: skip
HTTP_FAULTS = {"http_429": 429, "http_418": 418, "http_500": 500, "http_503": 503, "http_504": 504}
# Faults after which the exchange may hold the order although we could not tell.
UNCERTAIN = {"answer_lost", "answer_late", "in_flight", "refused", *HTTP_FAULTS}
EXPECTED = {  # the order's status right after its request, per fault (when it was sent)
    "none": Order.Status.FILLED, "insufficient": Order.Status.REJECTED,
    "rests": Order.Status.OPEN, "partial": Order.Status.PARTIALLY_FILLED,
    **{fault: Order.Status.UNKNOWN for fault in UNCERTAIN},
}  # fmt: skip
# One request fault. The HTTP errors, which all leave the order unknown, count as one kind; a
# request held on its way (it may land any time later: the richest) counts three times.
KINDS = ["in_flight", "in_flight", *sorted(EXPECTED.keys() - {"none", *HTTP_FAULTS}), "http"]
FAULTS = st.sampled_from(KINDS).flatmap(
    lambda kind: st.sampled_from(sorted(HTTP_FAULTS)) if kind == "http" else st.just(kind)
)
CANDLES = {  # as multiples of the reference price (the entry when long)
    "calm": (1.0, 1.002, 0.995, 1.0),
    "crash": (1.0, 1.001, 0.95, 0.97),  # through the 2% stop-loss
}
BREAKS = 2  # outages and stops begun per run, at most (the steps go to orders)
# Bounded for CI: about 30 s (SQLite) to 50 s (PostgreSQL) on the 2-core machine; the same
# fixed sequence of examples every run (derandomize), no example database.
SETTINGS = settings(
    max_examples=45,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def live_bot(
    user: Any, server: FaultyBinance, *, key: str, label: str, fee_mode: str = "quote"
) -> Bot:
    """A live bot (stopped) on ``server``, whose account ``key`` holds START_USDT and pays
    fees as ``fee_mode`` says. Its strategy never leaves its warm-up (HOLD): candles only
    exercise the stop exits."""
    server.add_account(key, SECRET, {"USDT": START_USDT}, fee_mode=fee_mode)
    Exchange.objects.update_or_create(
        ccxt_id="binance",
        defaults={"name": "Binance (local)", "kind": Exchange.Kind.CCXT,
                  "api_base_url": server.rest_url, "options": {"timeout": TIMEOUT_MS}},
    )  # fmt: skip
    instrument = instrument_ensure(exchange_id="binance", symbol="BTC/USDT")
    account = ExchangeAccount(owner=user, exchange=instrument.exchange, label=label)
    account.set_credentials(api_key=key, api_secret=SECRET)
    account.save()
    return make_bot(
        user, instrument, name=label, mode=Bot.Mode.LIVE, account=account,
        parameters={"fast": 3, "slow": 50}, capital=CAPITAL, stop_loss=0.02,
        fee_in_base=fee_mode == "base",
    )  # fmt: skip


def moved(fill: Fill) -> Decimal:
    """The coin a fill moved in the account: a buy's quantity less a fee taken in the coin."""
    if fill.side == "buy":
        return fill.quantity - (fill.fee_cost if fill.fee_currency == "BTC" else Decimal(0))
    return -fill.quantity


class OrderLifecycle(RuleBasedStateMachine):
    """One live bot on a fresh exchange server and account per example (module docstring)."""

    user: ClassVar[Any] = None
    examples: ClassVar[int] = 0
    fee_mode: ClassVar[str] = "quote"

    def __init__(self) -> None:
        super().__init__()
        OrderLifecycle.examples += 1
        n = OrderLifecycle.examples
        self.server = FaultyBinance(history_s=300, live_rate=0)
        self.server.start()
        self.key = f"sm-key-{n}"
        self.bot = live_bot(self.user, self.server, key=self.key, label=f"sm-{n}",
                            fee_mode=self.fee_mode)  # fmt: skip
        self.minute = 0
        self.down = False  # an outage spanning steps
        self.outages = self.stops = 0
        self.in_flight: set[str] = set()  # client ids of order requests held on their way
        self.uncertain: set[str] = set()  # client ids whose request's answer never came
        assert services.bot_start(bot_id=self.bot.pk, notify=False)
        self.running = True
        # Set after every step by the invariant: the bot's ledger holds a position; an order
        # would go out now (the exchange up, the bot reconciled, no order unsettled).
        self.long = self.ready = False

    def teardown(self) -> None:
        try:
            self.server.stop()
        finally:
            Bot.objects.filter(pk=self.bot.pk).delete()
            ExchangeAccount.objects.filter(pk=self.bot.account_id).delete()
            Candle.objects.filter(instrument_id=self.bot.instrument_id).delete()

    # --- reading both sides ------------------------------------------------------------------
    def orders(self) -> list[Order]:
        return list(Order.objects.filter(bot_id=self.bot.pk).order_by("id"))

    def remote(self) -> dict[str, dict[str, Any]]:
        return {o["clientOrderId"]: o for o in self.server.orders(self.key)}

    def fresh_bot(self) -> Bot:
        return Bot.objects.select_related("account__exchange", "instrument").get(pk=self.bot.pk)

    # --- faults ------------------------------------------------------------------------------
    def arm(self, fault: str) -> None:
        server = self.server
        if self.down:
            return  # nothing reaches the exchange anyway
        if fault == "answer_lost":
            server.drop_next_order_response(mode="close")
        elif fault == "answer_late":
            server.drop_next_order_response(mode="delay", delay=LATE_S)
        elif fault == "in_flight":
            server.park_next_order()
        elif fault == "refused":
            server.go_down()
        elif fault in HTTP_FAULTS:
            server.fail_next(1, HTTP_FAULTS[fault], path="/api/v3/order")
        elif fault == "insufficient":
            server.refuse_next_order()
        elif fault == "rests":
            server.rest_next_order(0.0)
        elif fault == "partial":
            server.rest_next_order(0.4)

    def disarm(self, fault: str) -> None:
        self.server.clear_faults()
        if fault == "refused" and not self.down:
            self.server.come_up()

    def send(self, fault: str, act: Callable[[], Any]) -> Order | None:
        """Run ``act`` (a decision that may send one order) with ``fault`` armed; check what
        one order request may do and return the new order, if any."""
        before = {o.pk for o in self.orders()}
        posts, parked = self.server.order_requests, self.server.parked
        self.arm(fault)
        try:
            act()
        finally:
            self.disarm(fault)
        new = [o for o in self.orders() if o.pk not in before]
        sent = self.server.order_requests - posts
        assert len(new) <= 1, new
        assert sent <= len(new), "a request went out without a new order"
        if not new:
            return None
        (order,) = new
        if order.error.startswith("not sent:"):
            assert order.status == Order.Status.REJECTED and sent == 0
            return order
        if self.down or fault == "refused":
            assert sent == 0
            assert order.status == Order.Status.UNKNOWN, (order.status, order.error)
            self.uncertain.add(order.client_order_id)
            return order
        assert sent == 1
        assert order.status == EXPECTED[fault], (fault, order.status, order.error)
        if fault in UNCERTAIN:
            self.uncertain.add(order.client_order_id)
        if fault == "insufficient":
            assert INSUFFICIENT in order.error
        if fault == "in_flight":
            assert self.server.parked == parked + 1
            self.in_flight.add(order.client_order_id)
        return order

    # --- rules -------------------------------------------------------------------------------
    @precondition(lambda self: self.running)
    @rule()
    def decide(self) -> None:
        """The bot decides on its next candle (``bot_process_signal``): BUY when flat, SELL
        when long. The order goes out unless an earlier one is unsettled (or the bot has not
        reconciled since it started)."""
        self.decision("none")

    @precondition(lambda self: self.running and self.ready)
    @rule(fault=FAULTS)
    def decide_into_a_fault(self, fault: str) -> None:
        """The same, when the order goes out: its request meets ``fault``."""
        self.decision(fault)

    def decision(self, fault: str) -> None:
        action = "SELL" if self.long else "BUY"
        self.minute += 1
        rows = []

        def act() -> None:
            rows.append(live_support.decide(self.bot, action, self.minute))

        order = self.send(fault, act)
        (row,) = rows
        assert Order.objects.filter(signal_id=row.pk).count() <= 1
        if order is not None:
            assert order.signal_id == row.pk and order.side == action.lower()

    @precondition(lambda self: self.running and self.long)
    @rule(kind=st.sampled_from(sorted(CANDLES)), fault=FAULTS)
    def closed_candle(self, kind: str, fault: str) -> None:
        """A closed candle while long: a crash through the stop-loss sends one market exit, or
        defers it while an order is unsettled (the next candle then sends it)."""
        book = self.fresh_bot().paper_book
        ohlc = tuple(book["entry_price"] * m for m in CANDLES[kind])
        self.minute += 1
        order = self.send(fault, lambda: close_candle(self.bot, self.minute, ohlc))
        bot = self.fresh_bot()
        assert bot.status == Bot.Status.RUNNING, bot.status_reason
        if order is not None:
            assert (order.side, order.reason, order.signal_id) == ("sell", "stop_loss", None)

    @precondition(lambda self: self.server.resting)
    @rule(fraction=st.sampled_from([0.5, 1.0]))
    def exchange_fills_later(self, fraction: float) -> None:
        self.server.fill_resting(self.key, fraction)

    @precondition(lambda self: self.in_flight)
    @rule(lands=st.booleans())
    def in_flight_request_ends(self, lands: bool) -> None:
        """A request held past the client's timeout reaches the exchange now, or is lost."""
        ended = self.server.land_parked() if lands else self.server.lose_parked()
        assert ended == len(self.in_flight)
        self.in_flight.clear()

    # Outages and stops are few per run (each begins at most BREAKS times): the steps go to
    # orders and their settling.
    @precondition(lambda self: self.down or self.outages < BREAKS)
    @rule()
    def outage_begins_or_ends(self) -> None:
        """The exchange refuses connections from now on (open ones are cut), or again serves."""
        if self.down:
            self.server.come_up()
        else:
            self.server.go_down()
            self.outages += 1
        self.down = not self.down

    @precondition(lambda self: not self.running or self.stops < BREAKS)
    @rule()
    def stop_or_start(self) -> None:
        """``bot_stop`` (cancels its active orders) or ``bot_start`` (reconciles first)."""
        if self.running:
            self.stops += 1
            self.stop()
        else:
            self.start()

    def stop(self) -> None:
        assert services.bot_stop(bot_id=self.bot.pk)
        self.running = False
        if self.down:
            return
        remote = self.remote()
        for order in self.orders():
            if order.status in Order.ACTIVE:
                # Only what the exchange does not hold (yet) may stay unsettled.
                assert order.status == Order.Status.UNKNOWN, (order.status, order.error)
                assert order.client_order_id not in remote

    def start(self) -> None:
        assert services.bot_start(bot_id=self.bot.pk, notify=False)
        self.running = True
        bot = self.fresh_bot()
        # It may trade only once reconciled, which needs the exchange.
        assert (bot.reconciled_at is not None) == (not self.down)

    @rule(after_grace=st.booleans())
    def reconcile(self, after_grace: bool) -> None:
        """``reconcile_bot``. ``after_grace``: the grace period has passed, so every request
        sent has landed or died by now (while one is held on its way, it has not)."""
        expired = after_grace and not self.in_flight
        before = [(o.pk, o.status, o.filled_quantity) for o in self.orders()]
        outcome = reconcile_bot(self.fresh_bot(), grace=timedelta(0) if expired else GRACE)
        if self.down:
            assert not outcome.ok
            assert [(o.pk, o.status, o.filled_quantity) for o in self.orders()] == before
            return
        assert outcome.ok, outcome.error
        self.check_reconciled(expired=expired)

    def check_reconciled(self, *, expired: bool) -> None:
        """After a successful reconciliation: every order as the exchange has it."""
        remote = self.remote()
        trades = self.server.account_trades(self.key)
        for order in self.orders():
            theirs = remote.get(order.client_order_id)
            if theirs is None:
                allowed = {Order.Status.REJECTED, Order.Status.CANCELLED}
                if not expired:
                    allowed.add(Order.Status.UNKNOWN)  # may still be on its way
                assert order.status in allowed, (order.client_order_id, order.status)
                continue
            assert order.status == STATUS[theirs["status"]], (order.status, theirs["status"])
            assert order.filled_quantity == Decimal(theirs["executedQty"])
            assert order.exchange_order_id == str(theirs["orderId"])
            mine = set(order.fills.values_list("exchange_trade_id", flat=True))
            assert mine == {str(t["id"]) for t in trades if t["orderId"] == theirs["orderId"]}
        # The account's balance change is the bot's fills, all of them.
        fills = Fill.objects.filter(bot_id=self.bot.pk)
        held = sum((moved(f) for f in fills), Decimal(0))
        balance = self.server.total_balance(self.key)
        assert balance.get("BTC", Decimal(0)) == held
        if not any(o.status in Order.ACTIVE for o in self.orders()):
            bot = self.fresh_bot()
            book = bot.paper_book
            booked = float(book.get("units", 0.0)) + float(book.get("dust", 0.0))
            assert booked == pytest.approx(float(held), abs=1e-9)
            usdt = float(balance["USDT"] - START_USDT)
            assert float(bot.cash) - CAPITAL == pytest.approx(usdt, abs=1e-6)

    # --- invariants --------------------------------------------------------------------------
    @invariant()
    def both_sides_agree(self) -> None:
        """The module docstring's checks after every step (one read of each side)."""
        orders = self.orders()
        remote = self.remote()
        trades = {str(t["id"]): t for t in self.server.account_trades(self.key)}
        # No two orders share a client id, ours or the exchange's (live or not).
        ours = {o.client_order_id for o in orders}
        assert len(ours) == len(orders)
        assert len(remote) == len(self.server.orders(self.key))
        # The exchange holds no order we did not record first.
        assert set(remote) <= ours, set(remote) - ours
        for order in orders:
            theirs = remote.get(order.client_order_id)
            where = (order.client_order_id, order.status, order.error, theirs)
            if order.client_order_id in self.in_flight:
                # Its request is still on its way: whatever we say now could be wrong.
                assert order.status == Order.Status.UNKNOWN, where
            if order.status == Order.Status.REJECTED:
                assert theirs is None, where  # rejected, yet the exchange holds it
                if order.client_order_id in self.uncertain:
                    # Only reconciliation, after the grace period, may say it never arrived.
                    assert order.error == "not on exchange", where
            elif order.status in (Order.Status.FILLED, Order.Status.CANCELLED):
                # A finished order is finished the same way there (or was never there).
                if theirs is None:
                    assert order.status == Order.Status.CANCELLED, where
                    continue
                assert STATUS[theirs["status"]] == order.status, where
                assert order.filled_quantity == Decimal(theirs["executedQty"]), where
        # Every fill is one of the exchange's trades of its order, recorded once; the position
        # is the signed sum of the finished orders' fills.
        finished = Decimal(0)
        seen: set[str] = set()
        for fill in Fill.objects.filter(bot_id=self.bot.pk).select_related("order"):
            trade = trades.get(fill.exchange_trade_id)
            assert trade is not None and fill.exchange_trade_id not in seen, fill
            seen.add(fill.exchange_trade_id)
            assert str(trade["orderId"]) == fill.order.exchange_order_id
            assert Decimal(trade["qty"]) == fill.quantity
            if fill.order.status not in Order.ACTIVE:
                finished += moved(fill)
        bot = self.fresh_bot()
        units = float((bot.paper_book or {}).get("units", 0.0))
        dust = float((bot.paper_book or {}).get("dust", 0.0))
        assert units + dust == pytest.approx(float(finished), abs=1e-9)
        position = Position.objects.get(bot_id=bot.pk)
        assert float(position.quantity + position.dust) == pytest.approx(float(finished), abs=1e-9)
        assert bot.status == (Bot.Status.RUNNING if self.running else Bot.Status.STOPPED)
        self.long = units > 0
        self.ready = (
            not self.down
            and bot.reconciled_at is not None
            and not any(o.status in Order.ACTIVE for o in orders)
        )


@pytest.mark.parametrize("fee_mode", ["quote", "base"])
def test_the_live_order_lifecycle_holds_under_exchange_faults(user, settings, fee_mode):
    """In both fee rules: the quote currency, and the coin bought (Binance's default), where
    the position is the coin received and exits are rounded down to the lot step."""
    settings.TRADEAPP_LIVE_TRADING = True
    OrderLifecycle.user = user
    OrderLifecycle.fee_mode = fee_mode
    run_state_machine_as_test(OrderLifecycle, settings=SETTINGS)


@pytest.mark.parametrize("lands", [True, False])
def test_a_bot_stopped_while_its_order_is_on_its_way_keeps_it_for_reconciliation(
    user, settings, lands
):
    """The state machine's first find: ``bot_stop`` cancelled an order whose request had timed
    out and that the exchange did not hold yet as "cancelled: not on the exchange"; the request
    then landed and filled, and the fill was never recorded (reconciliation skips finished
    orders). Within the grace period the order now stays unknown for reconciliation."""
    settings.TRADEAPP_LIVE_TRADING = True
    with FaultyBinance(history_s=300, live_rate=0) as server:
        bot = live_bot(user, server, key="stop-key", label="stopped")
        assert services.bot_start(bot_id=bot.pk, notify=False)
        server.park_next_order()
        live_support.decide(bot, "BUY", 1)
        order = Order.objects.get(bot=bot)
        assert order.status == Order.Status.UNKNOWN and "RequestTimeout" in order.error
        assert services.bot_stop(bot_id=bot.pk)
        order.refresh_from_db()
        assert order.status == Order.Status.UNKNOWN, order.error
        assert (server.land_parked() if lands else server.lose_parked()) == 1
        # The beat task settles a stopped bot's unsettled order once the grace has passed.
        Order.objects.filter(pk=order.pk).update(created_at=order.created_at - GRACE)
        assert reconcile_all() == {"bots": 1, "failed": 0}
        order.refresh_from_db()
        bot.refresh_from_db()
        if lands:
            (theirs,) = server.orders("stop-key")
            assert theirs["status"] == "FILLED" and order.status == Order.Status.FILLED
            (fill,) = order.fills.all()
            assert fill.quantity == server.balance("stop-key")["BTC"] > 0
            assert bot.paper_book["units"] == float(fill.quantity)
        else:
            assert server.orders("stop-key") == []
            assert (order.status, order.error) == (Order.Status.REJECTED, "not on exchange")
            assert bot.paper_book["units"] == 0.0
