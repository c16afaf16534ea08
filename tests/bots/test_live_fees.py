"""Live spot trading follows the exchange's fee and quantity rules: fees booked in the asset the
exchange charged (the quote currency, the coin bought, or BNB), the position equal to the coin
the account holds, exits rounded down to the lot step, dust below the minimums kept apart and
never blocking the next entry, and reconciliation comparing balances. The real ccxt client
trades with the local exchange server (``FakeBinance``/``FaultyBinance``) in each fee mode."""

from __future__ import annotations

import json
from decimal import ROUND_DOWN, Decimal

import numpy as np
import pytest

from bots import live as live_module
from bots import services
from bots.models import Bot, BotEvent, Fill, Order, Position, Trade
from bots.models import Signal as SignalRow
from bots.parity import parity_check
from bots.reconcile import reconcile_bot
from tests.bots.live_support import KEY, SECRET, close_candle, decide, live_bot
from tests.bots.support import make_bot, store, walk
from tests.exchange_server import FakeBinance, FaultyBinance
from tradeapp.redis_client import get_redis

pytestmark = pytest.mark.django_db(transaction=True)
START_USDT = Decimal(50_000)
BNB_PRICE = Decimal(600)
MODES = ("quote", "base", "bnb")


@pytest.fixture
def live(settings) -> None:
    settings.TRADEAPP_LIVE_TRADING = True


def exchange(mode: str, cls: type[FakeBinance] = FakeBinance, **kwargs) -> FakeBinance:
    """A server with BTC/USDT (and BNB/USDT for the BNB mode) whose prices move only when a
    test says, and an account paying fees as ``mode`` says."""
    symbols = ("BTC/USDT", "BNB/USDT") if mode == "bnb" else ("BTC/USDT",)
    server = cls(history_s=600, live_rate=0, symbols=symbols, **kwargs)
    return server


def fund(server: FakeBinance, mode: str, *, usdt: Decimal = START_USDT) -> None:
    balances = {"USDT": usdt} | ({"BNB": 10} if mode == "bnb" else {})
    server.add_account(KEY, SECRET, balances, fee_mode=mode)
    if mode == "bnb":
        server.set_price("BNB/USDT", BNB_PRICE)


def started(user, server: FakeBinance, **overrides) -> Bot:
    """A live bot on ``server``, started (reconciled), BTC/USDT at 30,000 USDT."""
    bot = live_bot(user, server, **overrides)
    assert services.bot_start(bot_id=bot.pk)
    server.set_price("BTC/USDT", 30_000)
    return bot


def held(bot: Bot) -> float:
    """The coin the bot books: its position and its dust."""
    bot.refresh_from_db()
    book = bot.paper_book or {}
    return float(book.get("units", 0.0)) + float(book.get("dust", 0.0))


def account_btc(server: FakeBinance) -> float:
    return float(server.total_balance(KEY).get("BTC", Decimal(0)))


def bnb_spent_in_usdt(server: FakeBinance) -> Decimal:
    """The BNB fees of the account's trades, at the pinned BNB price."""
    return sum(
        (Decimal(t["commission"]) * BNB_PRICE for t in server.account_trades(KEY)
         if t["commissionAsset"] == "BNB"),
        Decimal(0),
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_ten_round_trips_every_order_accepted_and_the_position_is_the_balance(user, live, mode):
    prices = [30_000, 30_150.5, 29_870.25, 30_400, 30_010.75, 29_500, 29_999.99, 30_700.1,
              30_333.33, 29_950, 30_250.5, 30_080]  # fmt: skip
    with exchange(mode) as server:
        fund(server, mode)
        bot = live_bot(user, server, fee_in_base=mode == "base")
        assert services.bot_start(bot_id=bot.pk)
        differences = []
        for trip in range(10):
            for step, action in enumerate(("BUY", "SELL")):
                price = prices[(2 * trip + step) % len(prices)]
                server.set_price("BTC/USDT", price)
                row = decide(bot, action, 1 + 2 * trip + step, price=price)
                assert row.executed, row.no_order_reason
                differences.append(abs(held(bot) - account_btc(server)))
        orders = list(Order.objects.filter(bot=bot))
        on_exchange = server.orders(KEY)
        figures = {
            "mode": mode, "sent": server.order_posts,
            "accepted": sum(o["status"] == "FILLED" for o in on_exchange),
            "rejected": sum(o.status == Order.Status.REJECTED for o in orders),
            "max_position_minus_balance": max(differences),
        }  # fmt: skip
        print("LIVE-FEES", json.dumps(figures))  # the closing note's figures (pytest -s)
        assert (figures["sent"], figures["accepted"], figures["rejected"]) == (20, 20, 0)
        assert all(o.status == Order.Status.FILLED for o in orders)
        # Position equal to the account's balance after every order, to the float.
        assert figures["max_position_minus_balance"] < 1e-12
        fills = list(Fill.objects.filter(bot=bot))
        buys = {f.fee_currency for f in fills if f.side == "buy"}
        sells = {f.fee_currency for f in fills if f.side == "sell"}
        assert (buys, sells) == {
            "quote": ({"USDT"}, {"USDT"}), "base": ({"BTC"}, {"USDT"}),
            "bnb": ({"BNB"}, {"BNB"}),
        }[mode]  # fmt: skip
        for fill in fills:  # each fee as charged, and its value in USDT
            assert fill.fee_cost > 0
            rate = {"USDT": 1, "BTC": fill.price, "BNB": BNB_PRICE}[fill.fee_currency]
            assert float(fill.fee) == pytest.approx(float(fill.fee_cost * rate), rel=1e-12)
        # Cash moved as the account's USDT did; P&L is that less the BNB spent (valued).
        bot.refresh_from_db()
        usdt_change = server.total_balance(KEY)["USDT"] - START_USDT
        assert float(bot.cash) - 10_000 == pytest.approx(float(usdt_change), abs=1e-6)
        trades = list(Trade.objects.filter(bot=bot))
        assert len(trades) == 10
        pnl = sum(float(t.pnl) for t in trades)
        dust_cost = float(bot.paper_book.get("dust_committed", 0.0))
        expected = float(usdt_change - bnb_spent_in_usdt(server)) + dust_cost
        assert pnl == pytest.approx(expected, abs=1e-6)
        for trade in trades:  # the identity the pages rely on
            identity = float(trade.quantity) * float(trade.exit_price - trade.entry_price)
            assert float(trade.pnl) == pytest.approx(identity - float(trade.fees), abs=1e-8)
        position = Position.objects.get(bot=bot)
        assert position.quantity == 0 and float(position.dust) == pytest.approx(
            bot.paper_book.get("dust", 0.0), abs=1e-18
        )
        # Equity is the capital plus the P&L of every round trip and of the dust held.
        mark = float(position.mark_price)
        dust = float(bot.paper_book.get("dust", 0.0))
        assert float(bot.equity) == pytest.approx(10_000 + pnl - dust_cost + dust * mark, abs=1e-6)


def test_a_base_fee_buy_books_the_coin_received_and_the_exit_sells_it_on_the_lot_step(user, live):
    with exchange("base", lot_step="0.001", min_qty="0.001") as server:
        fund(server, "base")
        bot = started(user, server, fee_in_base=True)
        decide(bot, "BUY", 1)
        (fill,) = Fill.objects.filter(bot=bot, side="buy")
        # 10,000 USDT buys 0.333 BTC (the lot step); the exchange keeps 0.1 % of it.
        assert (fill.quantity, fill.fee_cost, fill.fee_currency) == (
            Decimal("0.333"), Decimal("0.000333"), "BTC",
        )  # fmt: skip
        assert held(bot) == pytest.approx(0.332667, abs=1e-15) == account_btc(server)
        bot.refresh_from_db()
        assert float(bot.cash) == pytest.approx(10_000 - 0.333 * 30_000, abs=1e-9)

        server.set_price("BTC/USDT", 30_300)
        row = decide(bot, "SELL", 2, price=30_300)
        sell = Order.objects.get(bot=bot, side="sell")
        assert sell.status == Order.Status.FILLED and sell.quantity == Decimal("0.332")
        check = next(c for c in row.risk_checks if c["name"] == "exchange_minimum")
        assert check["passed"] and "stays as dust" in check["detail"]
        position = Position.objects.get(bot=bot)
        assert position.quantity == 0
        assert float(position.dust) == pytest.approx(0.000667, abs=1e-15)
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        (trade,) = Trade.objects.filter(bot=bot)
        assert float(trade.quantity) == pytest.approx(0.332, abs=1e-15)

        # The dust blocks nothing: the next entry goes out, takes it in, and the next exit
        # sells both, rounded down again.
        server.set_price("BTC/USDT", 30_000)
        assert decide(bot, "BUY", 3).executed
        bot.refresh_from_db()
        assert bot.paper_book.get("dust", 0.0) == 0.0  # taken into the position
        before = held(bot)
        server.set_price("BTC/USDT", 30_100)
        assert decide(bot, "SELL", 4, price=30_100).executed
        second = Order.objects.get(bot=bot, side="sell", time__gt=sell.time)
        assert second.status == Order.Status.FILLED
        # All the coin held (the first trip's dust with it), down to the lot step.
        floor = Decimal(repr(before)).quantize(Decimal("0.001"), rounding=ROUND_DOWN)
        assert second.quantity == floor and floor > Decimal(repr(before - 0.000667))
        assert held(bot) == pytest.approx(before - float(floor), abs=1e-15)
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        assert Order.objects.filter(bot=bot, status=Order.Status.REJECTED).count() == 0


def test_a_position_below_the_minimum_notional_is_dust_never_sent_and_blocks_no_entry(user, live):
    with exchange("quote", min_notional="50") as server:
        fund(server, "quote")
        bot = started(user, server, capital=300, max_position_fraction=0.25)
        assert decide(bot, "BUY", 1).executed
        units = held(bot)
        assert units == pytest.approx(0.00249, abs=1e-15)  # 74.93 USDT at 30,000, lot 1e-5
        # The price falls to 12,000: the position is worth 29.88 USDT, below the 50 minimum.
        server.set_price("BTC/USDT", 12_000)
        row = decide(bot, "SELL", 2, price=12_000)
        assert not row.executed and row.no_order_reason.startswith("exchange_minimum: dust")
        assert "below the minimum 50 USDT" in row.no_order_reason
        assert server.order_posts == 1 and Order.objects.filter(bot=bot).count() == 1
        position = Position.objects.get(bot=bot)
        assert position.quantity == 0 and float(position.dust) == pytest.approx(units)
        (event,) = BotEvent.objects.filter(bot=bot, kind=BotEvent.Kind.DUST)
        assert "0.00249 BTC" in event.message
        # Flat for its rules: the next entry is sent, and takes the dust in.
        server.set_price("BTC/USDT", 30_000)
        bot.refresh_from_db()
        row = decide(bot, "BUY", 3)
        assert row.executed, row.no_order_reason
        assert Order.objects.get(bot=bot, time=row.time).status == Order.Status.FILLED
        bot.refresh_from_db()
        assert bot.paper_book.get("dust", 0.0) == 0.0
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        assert decide(bot, "SELL", 4).executed
        assert account_btc(server) == pytest.approx(0.0, abs=1e-12)
        assert held(bot) == pytest.approx(0.0, abs=1e-12)
        # The second round trip carried the first one's cost: the P&L of the whole is the
        # account's change.
        usdt_change = float(server.total_balance(KEY)["USDT"] - START_USDT)
        assert sum(float(t.pnl) for t in Trade.objects.filter(bot=bot)) == pytest.approx(
            usdt_change, abs=1e-6
        )


def test_an_entry_below_the_minimum_is_refused_before_it_is_sent(user, live):
    with exchange("quote") as server:
        fund(server, "quote")
        bot = started(user, server, capital=4)
        live_module._clients.clear()  # a worker process whose client has no markets yet
        row = decide(bot, "BUY", 1)
        assert not row.executed
        assert row.no_order_reason.startswith("exchange_minimum: entry not sent: notional")
        assert "below the minimum 5 USDT" in row.no_order_reason
        assert server.order_posts == 0 and not Order.objects.filter(bot=bot).exists()
        bot.refresh_from_db()
        assert bot.paper_book.get("units", 0.0) == 0.0 and float(bot.cash) == 4


@pytest.mark.parametrize("mode", MODES)
def test_partial_fills_book_each_fee_in_its_asset(user, live, mode):
    with exchange(mode, FaultyBinance) as server:
        fund(server, mode)
        bot = started(user, server, fee_in_base=mode == "base")
        server.rest_next_order(0.4)
        decide(bot, "BUY", 1)
        buy = Order.objects.get(bot=bot)
        assert buy.status == Order.Status.PARTIALLY_FILLED
        assert server.fill_resting(KEY) == 1
        bot.refresh_from_db()
        reconcile_bot(bot)
        buy.refresh_from_db()
        assert buy.status == Order.Status.FILLED
        fills = list(buy.fills.all())
        assert len(fills) == 2
        expected_asset = {"quote": "USDT", "base": "BTC", "bnb": "BNB"}[mode]
        assert {f.fee_currency for f in fills} == {expected_asset}
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)

        server.set_price("BTC/USDT", 30_600)
        server.rest_next_order(0.5)
        decide(bot, "SELL", 2, price=30_600)
        sell = Order.objects.get(bot=bot, side="sell")
        assert sell.status == Order.Status.PARTIALLY_FILLED
        server.fill_resting(KEY)
        bot.refresh_from_db()
        reconcile_bot(bot)
        sell.refresh_from_db()
        assert sell.status == Order.Status.FILLED and sell.fills.count() == 2
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        (trade,) = Trade.objects.filter(bot=bot)
        usdt_change = server.total_balance(KEY)["USDT"] - START_USDT
        dust_cost = float(Bot.objects.get(pk=bot.pk).paper_book.get("dust_committed", 0.0))
        expected = float(usdt_change - bnb_spent_in_usdt(server)) + dust_cost
        assert float(trade.pnl) == pytest.approx(expected, abs=1e-6)


def test_a_fee_in_a_third_asset_is_valued_at_its_fill_and_counted_in_pnl_not_cash(user, live):
    with exchange("bnb") as server:
        fund(server, "bnb")
        bot = started(user, server)
        decide(bot, "BUY", 1)
        (fill,) = Fill.objects.filter(bot=bot)
        # 9,990.00 USDT of BTC (0.333 BTC); 0.075 % of it in BNB at 600 USDT.
        assert fill.fee_currency == "BNB"
        assert fill.fee_cost == (fill.quantity * fill.price * Decimal("0.00075") / BNB_PRICE
                                 ).quantize(Decimal("1e-8"))  # fmt: skip
        assert float(fill.fee) == pytest.approx(float(fill.fee_cost * BNB_PRICE), rel=1e-12)
        bot.refresh_from_db()
        # The cash paid the notional only; the BNB is in the book apart.
        paid = fill.quantity * fill.price
        assert float(bot.cash) == pytest.approx(10_000 - float(paid), abs=1e-9)
        assert bot.paper_book["other_fees"] == pytest.approx(float(fill.fee), rel=1e-15)
        assert held(bot) == float(fill.quantity) == account_btc(server)
        assert float(bot.equity) == pytest.approx(
            float(bot.cash) + float(fill.quantity) * 30_000 - float(fill.fee), abs=1e-9
        )


def test_the_api_and_the_page_show_each_fee_with_its_asset(user, live, client):
    with exchange("base") as server:
        fund(server, "base")
        bot = started(user, server, fee_in_base=True)
        decide(bot, "BUY", 1)
        client.force_login(user)
        (order,) = client.get(f"/api/orders/?bot={bot.pk}").json()["results"]
        (fill,) = order["fills"]
        assert fill["fee_currency"] == "BTC" and Decimal(fill["fee_cost"]) == Decimal("0.00033333")
        assert Decimal(fill["fee"]) == Decimal("0.00033333") * Decimal(fill["price"])
        position = client.get(f"/api/bots/{bot.pk}/").json()["position"]
        assert Decimal(position["quantity"]) == Decimal("0.33299667")
        assert client.get(f"/api/bots/{bot.pk}/").json()["fee_in_base"] is True
        html = client.get(f"/bots/{bot.pk}/").content.decode()
        assert "0.00033333 BTC" in html and 'id="dust-value"' in html


def test_reconciliation_finds_a_balance_mismatch_stops_entries_and_clears_it(user, live):
    with exchange("base") as server:
        fund(server, "base")
        bot = started(user, server, fee_in_base=True)
        decide(bot, "BUY", 1)
        decide(bot, "SELL", 2)
        bot.refresh_from_db()
        assert reconcile_bot(bot).balance == "ok"
        assert not BotEvent.objects.filter(bot=bot, kind="balance_mismatch").exists()

        pubsub = get_redis().pubsub()
        pubsub.subscribe("system_events")
        pubsub.get_message(timeout=1.0)
        # Someone moves 0.05 BTC into the account outside the bot.
        server.set_balance(KEY, "BTC", Decimal(str(account_btc(server))) + Decimal("0.05"))
        outcome = reconcile_bot(bot)
        assert outcome.ok and outcome.balance == "mismatch"
        (event,) = BotEvent.objects.filter(bot=bot, kind="balance_mismatch")
        assert event.data["difference"] == pytest.approx(0.05, abs=1e-12)
        assert "balance mismatch" in event.message and "no entries" in event.message
        message = pubsub.get_message(timeout=2.0)
        pubsub.close()
        payload = json.loads(message["data"])
        assert (payload["type"], payload["severity"], payload["bot_id"]) == (
            "bot.balance_mismatch", "error", bot.pk,
        )  # fmt: skip
        # Found again unchanged: no second event.
        bot.refresh_from_db()
        reconcile_bot(bot)
        assert BotEvent.objects.filter(bot=bot, kind="balance_mismatch").count() == 1

        row = decide(bot, "BUY", 3)
        assert not row.executed and "balance: balance mismatch" in row.no_order_reason
        assert server.order_posts == 2

        # The coin goes back: the next reconciliation clears it and entries resume.
        server.set_balance(KEY, "BTC", Decimal(str(account_btc(server))) - Decimal("0.05"))
        bot.refresh_from_db()
        assert reconcile_bot(bot).balance == "ok"
        assert BotEvent.objects.filter(bot=bot, kind="balance_resolved").count() == 1
        bot.refresh_from_db()
        assert "balance_mismatch" not in bot.risk_state
        assert decide(bot, "BUY", 4).executed


def test_bots_sharing_an_account_are_compared_with_what_the_others_book(user, live):
    with exchange("base") as server:
        fund(server, "base")
        first = live_bot(user, server, fee_in_base=True, name="first")
        second = make_bot(user, first.instrument, name="second", mode=Bot.Mode.LIVE,
                          account=first.account, fee_in_base=True)  # fmt: skip
        for bot in (first, second):
            assert services.bot_start(bot_id=bot.pk)
        server.set_price("BTC/USDT", 30_000)
        decide(first, "BUY", 1)
        server.set_price("BTC/USDT", 30_500)
        decide(second, "BUY", 1)
        assert held(first) + held(second) == pytest.approx(account_btc(server), abs=1e-15)
        for bot in (first, second):
            bot.refresh_from_db()
            assert reconcile_bot(bot).balance == "ok"
        # A started bot whose account holds less than the bots book: found at its start.
        server.set_balance(KEY, "BTC", Decimal("0.1"))
        services.bot_stop(bot_id=second.pk)
        assert services.bot_start(bot_id=second.pk)
        assert BotEvent.objects.filter(bot=second, kind="balance_mismatch").count() == 1
        second.refresh_from_db()
        assert second.risk_state["balance_mismatch"]["other_bots"] == pytest.approx(held(first))


def test_a_stop_exit_on_a_base_fee_exchange_sells_what_is_held(user, live):
    with exchange("base") as server:
        fund(server, "base")
        bot = started(user, server, fee_in_base=True, stop_loss=0.01)
        decide(bot, "BUY", 1)
        server.set_price("BTC/USDT", 29_500)
        close_candle(bot, 2, (30_000, 30_010, 29_400, 29_500))
        exit_ = Order.objects.get(bot=bot, side="sell")
        assert (exit_.reason, exit_.status) == ("stop_loss", Order.Status.FILLED), exit_.error
        assert exit_.quantity == Decimal("0.33299")  # 0.33299667 down to the lot step
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        assert SignalRow.objects.filter(bot=bot).count() == 2  # the BUY and the candle's HOLD


def test_the_parity_check_of_a_live_bot_models_the_exchanges_fee_and_lot_rules(user, live):
    history = 40
    data = walk(160, seed=11)
    for name in ("open", "high", "low", "close"):
        data[name] = np.round(data[name] * 300, 2)  # about 30,000 USDT, on the 0.01 tick
    with exchange("base") as server:
        fund(server, "base")
        bot = live_bot(user, server, fee_in_base=True, slippage=0.0)
        instrument = bot.instrument
        store(instrument, data, slice(0, history))
        assert services.bot_start(bot_id=bot.pk)
        for j in range(history, 159):
            # The order a candle decides fills at the exchange's price: the next candle's open.
            server.set_price("BTC/USDT", Decimal(repr(float(data["open"][j + 1]))))
            (close_ms,) = store(instrument, data, slice(j, j + 1))
            services.process_candle(instrument_id=instrument.pk, timeframe="1m", close_ms=close_ms)
        assert Order.objects.filter(bot=bot).exclude(status=Order.Status.FILLED).count() == 0
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        report = parity_check(bot)
        assert report.ok, report.lines()
        assert report.bot_fills == report.backtest_fills >= 6
        assert report.max_price_deviation < 1e-12  # filled at the next candles' opens

        # Had the check assumed the fee in the quote currency (as the exchange did not), the
        # entries would differ by the fee: the tolerance is the lot step, not the fee.
        Fill.objects.filter(bot=bot, side="buy").update(fee_currency="USDT")
        Bot.objects.filter(pk=bot.pk).update(fee_in_base=False)
        bot.refresh_from_db()
        wrong = parity_check(bot)
        assert not wrong.ok
        assert all(" buy: " in line for line in wrong.fill_mismatches)


def test_adopting_the_accounts_balance_is_a_transfer_that_leaves_the_pnl_alone(user, live, client):
    with exchange("base") as server:
        fund(server, "base")
        bot = started(user, server, fee_in_base=True)
        decide(bot, "BUY", 1)
        bot.refresh_from_db()
        pnl_before = float(bot.equity) - float(bot.capital)
        # 0.1 BTC leaves the account outside the bot (a withdrawal).
        server.set_balance(KEY, "BTC", Decimal(str(account_btc(server))) - Decimal("0.1"))
        assert reconcile_bot(bot).balance == "mismatch"
        client.force_login(user)
        page = client.get(f"/bots/{bot.pk}/").content.decode()
        assert 'id="balance-mismatch"' in page and "adopt-balance" in page
        # Another user cannot; the owner can, through the page.
        other = type(user).objects.create_user("mallory", password="x-pass-123456")
        client.force_login(other)
        assert client.post(f"/bots/{bot.pk}/adopt-balance/").status_code == 404
        assert client.post(f"/api/bots/{bot.pk}/adopt-balance/").status_code == 404
        client.force_login(user)
        response = client.post(f"/bots/{bot.pk}/adopt-balance/", follow=True)
        assert "account balance adopted: -0.1 BTC" in response.content.decode()
        bot.refresh_from_db()
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        assert "balance_mismatch" not in bot.risk_state
        # The capital moved by the coin's value at the last price; the P&L did not.
        assert float(bot.capital) == pytest.approx(10_000 - 0.1 * 30_000, abs=1e-9)
        assert float(bot.equity) - float(bot.capital) == pytest.approx(pnl_before, abs=1e-6)
        event = BotEvent.objects.filter(bot=bot, kind="balance_resolved").get()
        assert event.actor == user and event.data["adopted"] == pytest.approx(-0.1, abs=1e-12)
        bot.refresh_from_db()
        assert reconcile_bot(bot).balance == "ok"
        # Exits sell what is left and the account has it: accepted.
        assert decide(bot, "SELL", 2).executed
        assert Order.objects.get(bot=bot, side="sell").status == Order.Status.FILLED
        assert held(bot) == pytest.approx(account_btc(server), abs=1e-15)
        # An order in flight refuses it, over the API, with the reason.
        Order.objects.filter(bot=bot, side="sell").update(status=Order.Status.UNKNOWN)
        response = client.post(f"/api/bots/{bot.pk}/adopt-balance/")
        assert response.status_code == 400 and "in flight" in response.content.decode()
