"""The live broker (``bots.live.CcxtBroker``) and reconciliation (``bots.reconcile``): the real
ccxt client sends signed orders to the local exchange server (``FakeBinance``, which checks the
HMAC signature and keeps the account's balances and orders)."""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import ccxt
import pytest
from django.apps import apps as django_apps
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from bots import paper, services
from bots.brokers import BrokerError, broker_for
from bots.live import CcxtBroker
from bots.models import Bot, BotEvent, ExchangeAccount, Fill, Order, Position, Trade
from bots.reconcile import reconcile_all, reconcile_bot
from tests.bots.live_support import KEY, SECRET, TIMEOUT_MS, close_candle, decide, live_bot
from tests.bots.support import MINUTE, START_MS
from tests.exchange_server import FakeBinance
from tradeapp.redis_client import get_redis

pytestmark = pytest.mark.django_db(transaction=True)
START_USDT = 50_000


@pytest.fixture
def server() -> Iterator[FakeBinance]:
    with FakeBinance(history_s=600, live_rate=2) as ex:
        ex.add_account(KEY, SECRET, {"USDT": START_USDT})
        yield ex


@pytest.fixture
def live(settings) -> None:
    settings.TRADEAPP_LIVE_TRADING = True


def events(bot: Bot, kind: str) -> list[BotEvent]:
    return list(BotEvent.objects.filter(bot=bot, kind=kind).order_by("id"))


def test_signed_orders_reach_the_exchange_fill_and_close_a_round_trip(user, server, live):
    bot = live_bot(user, server)
    pubsub = get_redis().pubsub()
    pubsub.subscribe(f"trade_updates:{bot.pk}")
    assert services.bot_start(bot_id=bot.pk)
    bot.refresh_from_db()
    assert bot.reconciled_at is not None and len(events(bot, "reconciled")) == 1

    row = decide(bot, "BUY", 1)
    buy = Order.objects.get(bot=bot)
    assert row.executed and buy.signal_id == row.pk
    assert buy.status == Order.Status.FILLED, buy.error
    (on_exchange,) = server.orders(KEY)
    assert (
        on_exchange["clientOrderId"] == buy.client_order_id == f"tb{bot.pk}-{START_MS + MINUTE}-b"
    )
    assert on_exchange["status"] == "FILLED" and buy.exchange_order_id == str(
        on_exchange["orderId"]
    )
    (fill,) = Fill.objects.filter(order=buy)
    assert fill.exchange_trade_id and fill.quantity == buy.filled_quantity > 0
    assert server.balance(KEY)["BTC"] == buy.filled_quantity
    # Sized from the allocated capital as in paper mode: the whole 10,000 pays notional and fee.
    assert 9_900 < float(fill.quantity * fill.price + fill.fee) <= 10_000
    bot.refresh_from_db()
    assert bot.paper_book["units"] == float(buy.filled_quantity)
    assert Position.objects.get(bot=bot).quantity == buy.filled_quantity

    decide(bot, "SELL", 2)
    sell = Order.objects.get(bot=bot, side="sell")
    assert sell.status == Order.Status.FILLED, sell.error
    assert server.balance(KEY)["BTC"] == 0 and server.order_posts == 2
    (trade,) = Trade.objects.filter(bot=bot)
    assert (trade.entry_order, trade.exit_order, trade.exit_reason) == (buy, sell, "signal")
    bot.refresh_from_db()
    # The bot's ledger moved exactly as the exchange account did.
    usdt_change = float(server.balance(KEY)["USDT"]) - START_USDT
    assert float(bot.cash) - 10_000 == pytest.approx(usdt_change, abs=1e-6)
    assert float(trade.pnl) == pytest.approx(usdt_change, abs=1e-6)
    assert Position.objects.get(bot=bot).quantity == 0

    seen = []  # published at commit, above: all waiting in the subscription
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "message":
            seen.append(json.loads(message["data"])["type"])
    pubsub.close()
    for kind in ("order.updated", "fill.created", "trade.closed", "portfolio.updated",
                 "bot.reconciled"):  # fmt: skip
        assert kind in seen, seen


def test_a_bad_secret_is_refused_with_a_clear_error_and_never_shown(user, server, live, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-5b0e77"
    bot = live_bot(user, server, secret=wrong)
    assert services.bot_start(bot_id=bot.pk)
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING and bot.reconciled_at is None
    (failed,) = events(bot, "reconcile_failed")
    assert "AuthenticationError" in failed.message
    assert "Signature for this request is not valid" in failed.message

    # The exchange accepts the credentials once they are right...
    account = ExchangeAccount.objects.get(pk=bot.account_id)
    account.set_credentials(api_secret=SECRET)
    account.save()
    bot.refresh_from_db()
    assert reconcile_bot(bot).ok
    # ... and refuses an order signed with a wrong secret: rejected, with the exchange's reason.
    account.set_credentials(api_secret=wrong)
    account.save()
    row = decide(bot, "BUY", 1)
    order = Order.objects.get(bot=bot)
    assert order.status == Order.Status.REJECTED
    assert "AuthenticationError" in order.error and "Signature" in order.error
    assert row.executed  # it was sent; the order row tells how it ended
    assert server.order_posts == 1 and server.orders(KEY) == []

    recorded = [order.error, *BotEvent.objects.filter(bot=bot).values_list("message", flat=True)]
    recorded += [
        json.dumps(d) for d in BotEvent.objects.filter(bot=bot).values_list("data", flat=True)
    ]
    for secret in (wrong, SECRET, KEY):
        assert not any(secret in text for text in recorded)
        assert secret not in caplog.text
        assert secret not in repr(CcxtBroker(bot)) and secret not in repr(account)


@pytest.mark.parametrize("mode", ["close", "delay"])
def test_a_dropped_answer_leaves_an_unknown_order_that_reconciliation_settles(
    user, server, live, mode
):
    bot = live_bot(user, server)
    assert services.bot_start(bot_id=bot.pk)
    server.drop_next_order_response(mode=mode, delay=3 * TIMEOUT_MS / 1000)
    decide(bot, "BUY", 1)
    order = Order.objects.get(bot=bot)
    # The exchange has it, we could not tell: unknown, never rejected.
    assert order.status == Order.Status.UNKNOWN
    expected = "RequestTimeout" if mode == "delay" else "NetworkError"
    assert expected in order.error
    (on_exchange,) = server.orders(KEY)
    assert on_exchange["status"] == "FILLED" and not order.fills.exists()
    bot.refresh_from_db()
    assert bot.paper_book["units"] == 0.0

    # The next decision waits for it: not sent while an order is unsettled.
    decide(bot, "BUY", 2)
    (second,) = Order.objects.filter(bot=bot).exclude(pk=order.pk)
    assert second.status == Order.Status.REJECTED
    assert second.error == f"not sent: order {order.client_order_id} is still unknown"

    outcome = reconcile_bot(bot)
    assert (outcome.ok, outcome.settled, outcome.adopted) == (True, 1, 0)
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.exchange_order_id
    (fill,) = order.fills.all()
    assert str(fill.quantity) == str(order.filled_quantity)
    assert fill.quantity == server.balance(KEY)["BTC"]
    bot.refresh_from_db()
    assert bot.paper_book["units"] == float(fill.quantity)
    assert server.order_posts == 2 - 1  # the refused sell never left
    assert len(server.orders(KEY)) == 1
    # Reconciling again changes nothing.
    assert reconcile_bot(bot).settled == 0 and Fill.objects.filter(bot=bot).count() == 1


# (An entry below the market's minimum notional is refused before it is sent:
# tests/bots/test_live_fees.py.)
@pytest.mark.parametrize(
    ("usdt", "capital", "reason"),
    [(100, 10_000, "Account has insufficient balance for requested action.")],
)
def test_exchange_refusals_are_rejected_with_their_reason(user, live, usdt, capital, reason):
    with FakeBinance(history_s=600, live_rate=2) as server:
        server.add_account(KEY, SECRET, {"USDT": usdt})
        bot = live_bot(user, server, capital=capital)
        assert services.bot_start(bot_id=bot.pk)
        decide(bot, "BUY", 1)
        order = Order.objects.get(bot=bot)
        assert order.status == Order.Status.REJECTED and reason in order.error
        assert server.order_posts == 1 and server.orders(KEY) == []
        bot.refresh_from_db()
        assert bot.paper_book["units"] == 0.0 and float(bot.cash) == capital


def test_an_unreachable_exchange_is_unknown_then_not_on_exchange_after_the_grace(
    user, server, live
):
    bot = live_bot(user, server)
    assert services.bot_start(bot_id=bot.pk)
    server.go_down()
    decide(bot, "BUY", 1)
    order = Order.objects.get(bot=bot)
    assert order.status == Order.Status.UNKNOWN, order.error
    server.come_up()
    bot.refresh_from_db()
    waiting = reconcile_bot(bot)  # within the grace period it may still arrive
    assert (waiting.ok, waiting.waiting) == (True, 1)
    assert Order.objects.get(pk=order.pk).status == Order.Status.UNKNOWN
    settled = reconcile_bot(bot, grace=timedelta(0))
    order.refresh_from_db()
    assert settled.settled == 1
    assert (order.status, order.error) == (Order.Status.REJECTED, "not on exchange")
    assert server.orders(KEY) == []


def test_reconciliation_adopts_the_exchange_orders_it_did_not_know(user, server, live):
    bot = live_bot(user, server)
    assert services.bot_start(bot_id=bot.pk)
    # A crash between sending and writing: the exchange holds orders of ours we have no row for.
    client = ccxt.binance({**server.ccxt_config(), "apiKey": KEY, "secret": SECRET})
    ours = Order.make_client_order_id(bot.pk, START_MS + 5 * MINUTE, "buy")
    client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": ours})
    other = Order.make_client_order_id(bot.pk + 1000, START_MS + 5 * MINUTE, "buy")
    client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": other})
    bot.refresh_from_db()
    outcome = reconcile_bot(bot)
    assert (outcome.ok, outcome.adopted) == (True, 1)
    adopted = Order.objects.get(bot=bot)
    assert adopted.client_order_id == ours and adopted.status == Order.Status.FILLED
    assert adopted.time.timestamp() * 1000 == START_MS + 5 * MINUTE
    assert float(adopted.filled_quantity) == 0.01 and adopted.fills.count() == 1
    assert not Order.objects.filter(client_order_id=other).exists()
    bot.refresh_from_db()
    assert bot.paper_book["units"] == 0.01
    (event,) = [e for e in events(bot, "reconciled") if e.data["adopted"]]
    assert event.data["adopted"] == 1
    assert reconcile_bot(bot).adopted == 0


def test_a_live_bot_does_not_trade_before_its_first_reconciliation(user, server, live):
    bot = live_bot(user, server)
    server.go_down()
    assert services.bot_start(bot_id=bot.pk)  # it runs, but may not trade yet
    server.come_up()
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING and bot.reconciled_at is None
    assert "reconciliation failed" in events(bot, "reconcile_failed")[0].message

    row = decide(bot, "BUY", 1)
    row.refresh_from_db()
    assert not row.executed
    assert row.no_order_reason.startswith("live order not sent: the live bot has not reconciled")
    assert row.risk_checks[-1]["name"] == "live_ready" and not row.risk_checks[-1]["passed"]
    assert Order.objects.get(bot=bot).status == Order.Status.REJECTED
    assert server.order_posts == 0

    assert reconcile_all() == {"bots": 1, "failed": 0}  # the beat task's work
    decide(bot, "BUY", 2)
    assert Order.objects.get(bot=bot, time__gt=row.time).status == Order.Status.FILLED
    assert server.order_posts == 1


def test_live_mode_is_refused_while_the_setting_is_off(user, server, settings):
    settings.TRADEAPP_LIVE_TRADING = False
    bot = live_bot(user, server)
    with pytest.raises(BrokerError, match="TRADEAPP_LIVE_TRADING"):
        broker_for(bot)
    with pytest.raises(services.BotStateError, match="TRADEAPP_LIVE_TRADING"):
        services.bot_start(bot_id=bot.pk)
    Bot.objects.filter(pk=bot.pk).update(status=Bot.Status.RUNNING)
    assert reconcile_all() == {"bots": 0, "failed": 0}
    assert server.requests == []


def test_stopping_a_live_bot_settles_its_unknown_order(user, server, live):
    bot = live_bot(user, server)
    assert services.bot_start(bot_id=bot.pk)
    server.drop_next_order_response(mode="close")
    decide(bot, "BUY", 1)
    assert Order.objects.get(bot=bot).status == Order.Status.UNKNOWN
    assert services.bot_stop(bot_id=bot.pk)
    # Cancelling found it filled on the exchange: adopted, not cancelled.
    order = Order.objects.get(bot=bot)
    assert order.status == Order.Status.FILLED and order.fills.count() == 1


def test_reconciliation_runs_every_minute_on_the_bots_queue():
    # The migration's rows (a transactional test's flush removes them: apply it again).
    migration = importlib.import_module("bots.migrations.0003_live_reconcile")
    migration.create_schedule(django_apps, None)
    task = PeriodicTask.objects.get(task="bots.reconcile")
    assert (task.queue, task.interval.every, task.interval.period) == ("bots", 1, "minutes")


# --- stops ---------------------------------------------------------------------------------


def entered(user, server, **risk) -> tuple[Bot, Order, float]:
    """A started live bot holding the position its BUY on minute 1 bought on the exchange."""
    bot = live_bot(user, server, **risk)
    assert services.bot_start(bot_id=bot.pk)
    decide(bot, "BUY", 1)
    buy = Order.objects.get(bot=bot)
    assert buy.status == Order.Status.FILLED, buy.error
    bot.refresh_from_db()
    return bot, buy, bot.paper_book["entry_price"]


def scaled(entry: float, ohlc: tuple[float, ...]) -> tuple[float, float, float, float]:
    """A candle as multiples of the entry price, in cents (as ``close_candle`` stores it)."""
    open_, high, low, close = (round(entry * v, 2) for v in ohlc)
    return open_, high, low, close


# (risk settings, candles after the entry as multiples of the entry price (the last one
# triggers), exit reason, trigger level as a multiple of the entry price)
STOP_CASES = {
    "stop_loss": ({"stop_loss": 0.02}, [(1.0, 1.001, 0.97, 0.99)], "stop_loss", 0.98),
    "take_profit": ({"take_profit": 0.03}, [(1.0, 1.04, 0.999, 1.01)], "take_profit", 1.03),
    "trailing_stop": (
        {"stop_loss": 0.10, "trailing_stop": 0.03},
        [(1.0, 1.05, 0.999, 1.04), (1.04, 1.041, 1.0, 1.01)],
        "trailing_stop",
        1.05 * 0.97,
    ),
    # Both levels inside one candle: the stop first, as the paper broker and the backtester.
    "stop_before_target": (
        {"stop_loss": 0.02, "take_profit": 0.03},
        [(1.0, 1.04, 0.97, 1.0)],
        "stop_loss",
        0.98,
    ),
}
CODES = {"stop_loss": "sl", "trailing_stop": "ts", "take_profit": "tp"}


@pytest.mark.parametrize("case", list(STOP_CASES))
def test_a_triggered_level_sends_one_market_exit_recorded_at_the_exchange_price(
    user, server, live, case
):
    risk, candles, reason, level = STOP_CASES[case]
    bot, buy, entry = entered(user, server, **risk)
    *before, trigger = candles
    for minute, ohlc in enumerate(before, start=2):
        close_candle(bot, minute, scaled(entry, ohlc))
        assert server.order_posts == 1 and not Order.objects.filter(bot=bot, side="sell")
        bot.refresh_from_db()
        # No level reached: the trailing extreme took in the candle's high.
        assert bot.paper_book["extreme"] == scaled(entry, ohlc)[1]
    minute = 2 + len(before)
    close_ms = START_MS + minute * MINUTE
    close_candle(bot, minute, scaled(entry, trigger))

    exit_order = Order.objects.get(bot=bot, side="sell")
    assert exit_order.client_order_id == f"tb{bot.pk}-{close_ms}-s{CODES[reason]}"
    assert exit_order.status == Order.Status.FILLED, exit_order.error
    assert exit_order.reason == reason and exit_order.signal_id is None
    assert server.order_posts == 2
    (on_exchange,) = [o for o in server.orders(KEY) if o["side"] == "SELL"]
    assert on_exchange["clientOrderId"] == exit_order.client_order_id
    assert on_exchange["type"] == "MARKET" and on_exchange["status"] == "FILLED"
    assert on_exchange["origQty"] == f"{buy.filled_quantity:.8f}"
    assert server.balance(KEY)["BTC"] == 0
    # Filled at the market, not at the level: the exchange's price is what is recorded.
    market = float(
        Decimal(on_exchange["cummulativeQuoteQty"]) / Decimal(on_exchange["executedQty"])
    )
    (fill,) = exit_order.fills.all()
    assert float(fill.price) == market == float(exit_order.price)
    (trade,) = Trade.objects.filter(bot=bot)
    assert (trade.entry_order, trade.exit_order, trade.exit_reason) == (buy, exit_order, reason)
    assert float(trade.exit_price) == market
    assert abs(market - level * entry) > 0.005 * entry
    bot.refresh_from_db()
    assert bot.paper_book["units"] == 0.0 and Position.objects.get(bot=bot).quantity == 0
    usdt_change = float(server.balance(KEY)["USDT"]) - START_USDT
    assert float(bot.cash) - 10_000 == pytest.approx(usdt_change, abs=1e-6)

    # The candle delivered again (the task redelivered): nothing more reaches the exchange.
    services.process_candle(instrument_id=bot.instrument_id, timeframe="1m", close_ms=close_ms)
    assert server.order_posts == 2 and Order.objects.filter(bot=bot).count() == 2


def test_a_candle_seen_again_does_not_place_its_exit_twice(user, server, live):
    bot, _buy, entry = entered(user, server, stop_loss=0.02)
    ledger = paper.PaperBook.from_dict(bot.paper_book)  # the position, before any exit
    candle = scaled(entry, (1.0, 1.001, 0.97, 0.99))
    close_candle(bot, 2, candle)
    assert server.order_posts == 2
    assert Order.objects.get(bot=bot, reason="stop_loss").status == Order.Status.FILLED
    # The same candle before the broker again, with the ledger as it was before the exit (a run
    # that read it earlier): the candle's exit exists, nothing is written or sent.
    with transaction.atomic():
        locked = Bot.objects.select_for_update().get(pk=bot.pk)
        result = CcxtBroker(locked).on_candle(
            locked, ledger, time_ms=START_MS + 2 * MINUTE, candle=candle
        )
    assert (result.fills, result.trades) == ([], [])
    assert server.order_posts == 2 and Order.objects.filter(bot=bot).count() == 2
    assert Trade.objects.filter(bot=bot).count() == 1


def test_a_stop_is_not_sent_while_an_earlier_order_is_unknown(user, server, live):
    bot, _buy, entry = entered(user, server, stop_loss=0.02)
    # The SELL signal's answer is lost: the exchange sold, the ledger cannot tell yet.
    server.drop_next_order_response(mode="close")
    decide(bot, "SELL", 2)
    sell = Order.objects.get(bot=bot, side="sell")
    assert sell.status == Order.Status.UNKNOWN
    bot.refresh_from_db()
    assert bot.paper_book["units"] > 0 and server.balance(KEY)["BTC"] == 0

    pubsub = get_redis().pubsub()
    pubsub.subscribe(f"trade_updates:{bot.pk}")
    stop_candle = scaled(entry, (1.0, 1.001, 0.97, 0.99))
    close_candle(bot, 3, stop_candle)
    # Selling again would have sold what the account no longer holds: nothing is sent.
    assert server.order_posts == 2
    assert not Order.objects.filter(bot=bot, reason="stop_loss").exists()
    (deferred,) = events(bot, "stop_deferred")
    assert deferred.data["reason"] == "stop_loss"
    assert deferred.data["time_ms"] == START_MS + 3 * MINUTE
    assert deferred.data["level"] == pytest.approx(entry * 0.98)
    assert f"order {sell.client_order_id} is still unknown" in deferred.message
    recorded = deferred.message + json.dumps(deferred.data)
    assert KEY not in recorded and SECRET not in recorded
    seen = []
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "message":
            seen.append(json.loads(message["data"]))
    pubsub.close()
    (published,) = [e for e in seen if e["type"] == "stop.deferred"]
    assert published["reason"] == "stop_loss" and published["message"] == deferred.message

    # Reconciliation finds the SELL filled: the position was closed by it, once.
    assert reconcile_bot(bot).settled == 1
    sell.refresh_from_db()
    assert sell.status == Order.Status.FILLED
    (trade,) = Trade.objects.filter(bot=bot)
    assert trade.exit_reason == "signal" and trade.exit_order == sell
    bot.refresh_from_db()
    assert bot.paper_book["units"] == 0.0
    # The next candle below the old level finds the ledger flat: no exit, no new deferral.
    close_candle(bot, 4, stop_candle)
    assert server.order_posts == 2 and len(events(bot, "stop_deferred")) == 1
    assert Order.objects.filter(bot=bot).count() == 2


def test_a_deferred_stop_is_decided_again_on_the_next_candle(user, server, live):
    bot, _buy, entry = entered(user, server, stop_loss=0.02)
    # An unsettled order that never reached the exchange (sent while it was down).
    server.go_down()
    decide(bot, "SELL", 2)
    sell = Order.objects.get(bot=bot, side="sell")
    assert sell.status == Order.Status.UNKNOWN
    server.come_up()
    stop_candle = scaled(entry, (1.0, 1.001, 0.97, 0.99))
    close_candle(bot, 3, stop_candle)
    assert len(events(bot, "stop_deferred")) == 1 and server.order_posts == 1
    # It never reached the exchange: after the grace period it is settled as not sent.
    assert reconcile_bot(bot, grace=timedelta(0)).settled == 1
    assert Order.objects.get(pk=sell.pk).status == Order.Status.REJECTED
    # The next candle still below the stop: the exit goes out now, once.
    close_candle(bot, 4, stop_candle)
    exit_order = Order.objects.get(bot=bot, reason="stop_loss")
    assert exit_order.client_order_id == f"tb{bot.pk}-{START_MS + 4 * MINUTE}-ssl"
    assert exit_order.status == Order.Status.FILLED, exit_order.error
    assert server.order_posts == 2 and server.balance(KEY)["BTC"] == 0
    assert Trade.objects.get(bot=bot).exit_reason == "stop_loss"


def test_a_deferred_stop_stays_triggered_when_the_price_comes_back(user, server, live):
    bot, _buy, entry = entered(user, server, stop_loss=0.02)
    server.go_down()
    decide(bot, "SELL", 2)  # never reaches the exchange: unknown, then settled as not sent
    sell = Order.objects.get(bot=bot, side="sell")
    server.come_up()
    close_candle(bot, 3, scaled(entry, (1.0, 1.001, 0.97, 0.99)))  # the stop triggers, deferred
    assert len(events(bot, "stop_deferred")) == 1 and server.order_posts == 1
    assert reconcile_bot(bot, grace=timedelta(0)).settled == 1
    assert Order.objects.get(pk=sell.pk).status == Order.Status.REJECTED
    # The price is back above the level: the stop that triggered still exits, at market.
    recovered = scaled(entry, (1.0, 1.01, 0.995, 1.005))
    close_candle(bot, 4, recovered)
    exit_order = Order.objects.get(bot=bot, reason="stop_loss")
    assert exit_order.client_order_id == f"tb{bot.pk}-{START_MS + 4 * MINUTE}-ssl"
    assert exit_order.status == Order.Status.FILLED, exit_order.error
    assert server.order_posts == 2 and server.balance(KEY)["BTC"] == 0
    assert Trade.objects.get(bot=bot).exit_reason == "stop_loss"
    bot.refresh_from_db()
    assert bot.paper_book["units"] == 0.0
    # Flat now: later candles send nothing more for that old trigger.
    close_candle(bot, 5, recovered)
    assert server.order_posts == 2 and len(events(bot, "stop_deferred")) == 1


def test_a_live_loss_starts_the_cooldown_and_the_next_entry_waits(user, server, live):
    bot, _buy, entry = entered(user, server, stop_loss=0.02, cooldown_candles=3)
    close_candle(bot, 2, scaled(entry, (1.0, 1.001, 0.97, 0.99)))  # the stop exits at a loss
    (trade,) = Trade.objects.filter(bot=bot)
    assert trade.exit_reason == "stop_loss" and float(trade.pnl) < 0
    bot.refresh_from_db()
    assert bot.risk_state["cooldown_left"] == 3
    signal = decide(bot, "BUY", 3)
    assert not signal.executed
    assert "cooling down" in signal.no_order_reason
    assert server.order_posts == 2  # the entry and the stop exit, nothing more
