"""The local Binance server's fee modes, filters and account helpers, through the real sync ccxt
client: every commission, balance move and refusal is checked to the exact Decimal amount.

Prices are pinned (``live_rate=0`` and ``set_price``): BTC/USDT at 30123.45, BNB/USDT at 612.34.
The expected amounts below are worked out by hand from Binance's rules (see the server's module
docstring), not with the server's own formulas:

* a 200 USDT market buy is floor(200 / 30123.45, 0.00001) = 0.00663 BTC, a notional of
  199.7184735: fee 0.19971847 USDT ("quote", 0.1997184735 rounded), 0.00000663 BTC ("base") or
  199.7184735 * 0.00075 / 612.34 = 0.00024461713... -> 0.00024462 BNB ("bnb");
* a 0.005 BTC market sell is a notional of 150.61725: fee 0.15061725 USDT ("quote" and "base")
  or 0.00018447747... -> 0.00018448 BNB ("bnb").
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from tests.exchange_server import FILTERS, FakeBinance, FaultyBinance

D = Decimal
BTC = "BTC/USDT"
SECRET = "xs-test-secret-9b1e"  # the local server's, not a real one
BTC_PRICE, BNB_PRICE = D("30123.45"), D("612.34")
_keys = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultyBinance]:
    with FaultyBinance(history_s=60, live_rate=0, symbols=(BTC, "BNB/USDT")) as ex:
        yield ex


@pytest.fixture
def ex(server: FaultyBinance) -> FaultyBinance:
    """The module's server with its faults cleared and its prices pinned again."""
    server.clear_faults()
    server.set_price(BTC, BTC_PRICE)
    server.set_price("BNB/USDT", BNB_PRICE)
    return server


def open_account(
    server: FakeBinance, balances: dict[str, Any], fee_mode: str = "quote"
) -> tuple[str, ccxt.binance]:
    """A new account on ``server`` and a keyed sync ccxt client for it."""
    key = f"xs-key-{next(_keys)}"
    server.add_account(key, SECRET, balances, fee_mode=fee_mode)
    client = ccxt.binance(
        {**server.ccxt_config(), "apiKey": key, "secret": SECRET, "timeout": 5000}
    )
    return key, client


def moved(before: dict[str, Decimal], after: dict[str, Decimal]) -> dict[str, Decimal]:
    """The assets whose balance changed, and by how much."""
    assets = set(before) | set(after)
    changes = {a: after.get(a, D(0)) - before.get(a, D(0)) for a in assets}
    return {a: change for a, change in changes.items() if change != 0}


def locked(server: FakeBinance, key: str) -> dict[str, Decimal]:
    return moved(server.balance(key), server.total_balance(key))


def fee_of(row: dict[str, Any]) -> tuple[str, Decimal]:
    """A ccxt order's or trade's fee as (currency, exact cost)."""
    return row["fee"]["currency"], D(str(row["fee"]["cost"]))


def commissions(server: FakeBinance, key: str, order_id: str) -> list[tuple[str, Decimal]]:
    """The order's fills as ``/myTrades`` rows show them: (commissionAsset, commission)."""
    return [
        (t["commissionAsset"], D(t["commission"]))
        for t in server.account_trades(key)
        if str(t["orderId"]) == order_id
    ]


# --- fee modes: one market buy, one market sell ----------------------------------------------
ROUND_TRIP = {  # mode -> (buy fee, buy balance moves, sell fee, sell balance moves)
    "quote": (
        ("USDT", D("0.19971847")), {"USDT": D("-199.91819197"), "BTC": D("0.00663")},
        ("USDT", D("0.15061725")), {"USDT": D("150.46663275"), "BTC": D("-0.005")},
    ),
    "base": (
        ("BTC", D("0.00000663")), {"USDT": D("-199.7184735"), "BTC": D("0.00662337")},
        ("USDT", D("0.15061725")), {"USDT": D("150.46663275"), "BTC": D("-0.005")},
    ),
    "bnb": (
        ("BNB", D("0.00024462")),
        {"USDT": D("-199.7184735"), "BTC": D("0.00663"), "BNB": D("-0.00024462")},
        ("BNB", D("0.00018448")),
        {"USDT": D("150.61725"), "BTC": D("-0.005"), "BNB": D("-0.00018448")},
    ),
}  # fmt: skip


@pytest.mark.parametrize("mode", ["quote", "base", "bnb"])
def test_each_fee_mode_charges_a_market_buy_and_sell_in_its_asset(ex, mode):
    key, client = open_account(ex, {"USDT": 1000, "BNB": 1}, mode)
    buy_fee, buy_moves, sell_fee, sell_moves = ROUND_TRIP[mode]

    before = ex.balance(key)
    buy = client.create_market_buy_order_with_cost(BTC, 200)
    assert (buy["status"], buy["filled"], D(str(buy["cost"]))) == (
        "closed", 0.00663, D("199.7184735"),
    )  # fmt: skip
    assert fee_of(buy) == buy_fee
    assert [(f["currency"], D(str(f["cost"]))) for f in buy["fees"]] == [buy_fee]
    assert buy["info"]["fills"][0]["commissionAsset"] == buy_fee[0]
    assert moved(before, ex.balance(key)) == buy_moves
    assert locked(ex, key) == {}  # nothing stays locked for a fee

    before = ex.balance(key)
    sell = client.create_market_sell_order(BTC, 0.005)
    assert (sell["status"], D(str(sell["cost"]))) == ("closed", D("150.61725"))
    assert fee_of(sell) == sell_fee
    assert moved(before, ex.balance(key)) == sell_moves

    trades = client.fetch_my_trades(BTC)
    assert [(t["side"], t["order"]) for t in trades] == [("buy", buy["id"]), ("sell", sell["id"])]
    assert [fee_of(t) for t in trades] == [buy_fee, sell_fee]
    assert [t["info"]["commission"] for t in trades] == [f"{buy_fee[1]:.8f}", f"{sell_fee[1]:.8f}"]
    # ccxt's balance agrees with the server's to the last digit
    balance = client.fetch_balance()
    for asset, amount in ex.balance(key).items():
        assert D(str(balance[asset]["free"])) == amount


def test_bnb_fees_fall_back_to_the_asset_received_when_bnb_runs_out(ex):
    # 0.0003 BNB pays the buy's 0.00024462, not the sell's 0.00018448 with the 0.00005538 left.
    key, client = open_account(ex, {"USDT": 1000, "BNB": "0.0003"}, "bnb")
    before = ex.balance(key)
    buy = client.create_market_buy_order_with_cost(BTC, 200)
    assert fee_of(buy) == ("BNB", D("0.00024462"))
    assert ex.balance(key)["BNB"] == D("0.00005538")
    sell = client.create_market_sell_order(BTC, 0.005)
    assert fee_of(sell) == ("USDT", D("0.15061725"))  # the "base" rule: what a sell receives
    assert moved(before, ex.balance(key)) == {
        "USDT": D("-199.7184735") + D("150.46663275"), "BTC": D("0.00163"),
        "BNB": D("-0.00024462"),
    }  # fmt: skip
    # Without enough BNB a buy pays in the coin it receives.
    ex.set_balance(key, "BNB", "0.00024461")  # one unit short of the buy's BNB fee
    before = ex.balance(key)
    buy = client.create_market_buy_order_with_cost(BTC, 200)
    assert fee_of(buy) == ("BTC", D("0.00000663"))
    assert moved(before, ex.balance(key)) == {"USDT": D("-199.7184735"), "BTC": D("0.00662337")}
    assert [a for a, _ in commissions(ex, key, buy["id"])] == ["BTC"]


def test_bnb_exactly_enough_pays_the_whole_fee(ex):
    key, client = open_account(ex, {"USDT": 1000, "BNB": "0.00024462"}, "bnb")
    buy = client.create_market_buy_order_with_cost(BTC, 200)
    assert fee_of(buy) == ("BNB", D("0.00024462"))
    assert ex.balance(key)["BNB"] == 0


def test_the_bnb_fee_follows_the_bnb_price(ex):
    ex.set_price("BNB/USDT", "300")
    key, client = open_account(ex, {"USDT": 1000, "BNB": 1}, "bnb")
    buy = client.create_market_buy_order_with_cost(BTC, 200)
    # 199.7184735 * 0.00075 / 300 = 0.000499296183...
    assert fee_of(buy) == ("BNB", D("0.00049930"))
    assert ex.balance(key)["BNB"] == D("0.99950070")


# --- partial fills: the parts pay exactly the whole order's commission -----------------------
# 0.01 BTC at 30123.45 (notional 301.2345) in parts of 0.003 (30% at acceptance), 0.0035 (half
# of the rest) and 0.0035 (the rest); the last part pays what is left of the whole's commission.
PARTS = {  # (mode, side) -> (commission per part, balance moves of the whole order)
    ("quote", "buy"): (
        [("USDT", D("0.09037035")), ("USDT", D("0.10543208")), ("USDT", D("0.10543207"))],
        {"USDT": D("-301.5357345"), "BTC": D("0.01")},
    ),
    ("quote", "sell"): (
        [("USDT", D("0.09037035")), ("USDT", D("0.10543208")), ("USDT", D("0.10543207"))],
        {"USDT": D("300.9332655"), "BTC": D("-0.01")},
    ),
    ("base", "buy"): (
        [("BTC", D("0.000003")), ("BTC", D("0.0000035")), ("BTC", D("0.0000035"))],
        {"USDT": D("-301.2345"), "BTC": D("0.00999")},
    ),
    ("base", "sell"): (
        [("USDT", D("0.09037035")), ("USDT", D("0.10543208")), ("USDT", D("0.10543207"))],
        {"USDT": D("300.9332655"), "BTC": D("-0.01")},
    ),
    ("bnb", "buy"): (  # whole: 301.2345 * 0.00075 / 612.34 = 0.00036895495... -> 0.00036895
        [("BNB", D("0.00011069")), ("BNB", D("0.00012913")), ("BNB", D("0.00012913"))],
        {"USDT": D("-301.2345"), "BTC": D("0.01"), "BNB": D("-0.00036895")},
    ),
    ("bnb", "sell"): (
        [("BNB", D("0.00011069")), ("BNB", D("0.00012913")), ("BNB", D("0.00012913"))],
        {"USDT": D("301.2345"), "BTC": D("-0.01"), "BNB": D("-0.00036895")},
    ),
}  # fmt: skip
ONE_SHOT = {  # the same 0.01 BTC order filled at once: its single commission
    ("quote", "buy"): ("USDT", D("0.3012345")), ("quote", "sell"): ("USDT", D("0.3012345")),
    ("base", "buy"): ("BTC", D("0.00001")), ("base", "sell"): ("USDT", D("0.3012345")),
    ("bnb", "buy"): ("BNB", D("0.00036895")), ("bnb", "sell"): ("BNB", D("0.00036895")),
}  # fmt: skip


@pytest.mark.parametrize(("mode", "side"), list(PARTS))
def test_partial_fills_pay_each_part_in_the_fee_mode_and_sum_to_the_whole(ex, mode, side):
    key, client = open_account(ex, {"USDT": 1000, "BTC": "0.02", "BNB": 1}, mode)
    parts, moves = PARTS[mode, side]
    before = ex.balance(key)
    ex.rest_next_order(0.3)
    order = client.create_order(BTC, "market", side, 0.01)
    assert (order["status"], order["filled"]) == ("open", 0.003)
    assert ex.resting == 1
    assert ex.fill_resting(key, 0.5) == 1
    assert client.fetch_order(order["id"], BTC)["filled"] == 0.0065
    assert ex.fill_resting(key) == 1
    assert ex.resting == 0
    done = client.fetch_order(order["id"], BTC)
    assert (done["status"], done["filled"], D(str(done["cost"]))) == (
        "closed", 0.01, D("301.2345"),
    )  # fmt: skip
    paid = commissions(ex, key, order["id"])
    assert paid == parts
    asset, whole = ONE_SHOT[mode, side]
    assert {a for a, _ in paid} == {asset} and sum(c for _, c in paid) == whole
    trades = client.fetch_my_trades(BTC, params={"orderId": order["id"]})
    assert [fee_of(t) for t in trades] == parts
    assert moved(before, ex.balance(key)) == moves
    assert locked(ex, key) == {}


@pytest.mark.parametrize(("mode", "side"), list(ONE_SHOT))
def test_an_order_filled_at_once_pays_the_whole_of_the_parts(ex, mode, side):
    key, client = open_account(ex, {"USDT": 1000, "BTC": "0.02", "BNB": 1}, mode)
    before = ex.balance(key)
    order = client.create_order(BTC, "market", side, 0.01)
    assert fee_of(order) == ONE_SHOT[mode, side]
    assert moved(before, ex.balance(key)) == PARTS[mode, side][1]


CANCELLED = {  # (mode, side) -> balance moves after 0.0065 of 0.01 BTC filled, then a cancel
    ("quote", "buy"): {"USDT": D("-195.99822743"), "BTC": D("0.0065")},
    ("quote", "sell"): {"USDT": D("195.60662257"), "BTC": D("-0.0065")},
    ("base", "buy"): {"USDT": D("-195.802425"), "BTC": D("0.0064935")},
    ("base", "sell"): {"USDT": D("195.60662257"), "BTC": D("-0.0065")},
    ("bnb", "buy"): {"USDT": D("-195.802425"), "BTC": D("0.0065"), "BNB": D("-0.00023982")},
    ("bnb", "sell"): {"USDT": D("195.802425"), "BTC": D("-0.0065"), "BNB": D("-0.00023982")},
}  # fmt: skip


@pytest.mark.parametrize(("mode", "side"), list(CANCELLED))
def test_a_cancel_releases_exactly_what_a_part_filled_order_still_locks(ex, mode, side):
    key, client = open_account(ex, {"USDT": 1000, "BTC": "0.02", "BNB": 1}, mode)
    before = ex.balance(key)
    ex.rest_next_order(0.3)
    order = client.create_order(BTC, "market", side, 0.01)
    # what the order locks: a buy's notional (and in mode "quote" its whole fee), a sell's qty
    left = {"buy": {"USDT": D("210.86415") + (D("0.21086415") if mode == "quote" else 0)},
            "sell": {"BTC": D("0.007")}}[side]  # fmt: skip
    assert locked(ex, key) == left
    ex.fill_resting(key, 0.5)
    cancelled = client.cancel_order(order["id"], BTC)
    assert (cancelled["status"], cancelled["filled"]) == ("canceled", 0.0065)
    assert ex.resting == 0
    assert locked(ex, key) == {}
    assert moved(before, ex.balance(key)) == CANCELLED[mode, side]


def test_bnb_running_out_between_parts_switches_the_rest_to_the_base_rule(ex):
    # 0.0002 BNB pays the first part's 0.00011069, not the second's 0.00012913.
    key, client = open_account(ex, {"USDT": 1000, "BNB": "0.0002"}, "bnb")
    before = ex.balance(key)
    ex.rest_next_order(0.3)
    order = client.create_order(BTC, "market", "buy", 0.01)
    ex.fill_resting(key, 0.5)
    ex.fill_resting(key)
    # the base-rule parts sum to the base commission of the 0.007 they filled
    assert commissions(ex, key, order["id"]) == [
        ("BNB", D("0.00011069")), ("BTC", D("0.0000035")), ("BTC", D("0.0000035")),
    ]  # fmt: skip
    assert moved(before, ex.balance(key)) == {
        "USDT": D("-301.2345"), "BTC": D("0.009993"), "BNB": D("-0.00011069"),
    }  # fmt: skip
    fees = client.fetch_order_trades(order["id"], BTC)
    assert [fee_of(t) for t in fees] == commissions(ex, key, order["id"])


@pytest.mark.parametrize(("mode", "held"), [("quote", D("200.2")), ("base", D(200)),
                                            ("bnb", D(200))])  # fmt: skip
def test_a_resting_limit_buy_locks_its_fee_only_in_quote_mode(ex, mode, held):
    key, client = open_account(ex, {"USDT": 1000, "BNB": 1}, mode)
    order = client.create_limit_buy_order(BTC, 0.01, 20_000)
    assert order["status"] == "open"
    assert ex.balance(key)["USDT"] == 1000 - held
    assert locked(ex, key) == {"USDT": held}
    client.cancel_order(order["id"], BTC)
    assert ex.balance(key) == {"USDT": D(1000), "BNB": D(1)}
    assert locked(ex, key) == {}


def test_the_account_reports_its_commission_rates(ex):
    _, client = open_account(ex, {"USDT": 10}, "base")
    account = client.private_get_account()
    assert int(account["takerCommission"]) == int(account["makerCommission"]) == 10
    assert D(account["commissionRates"]["taker"]) == D("0.001")


def test_fee_modes_are_checked(ex):
    with pytest.raises(ValueError, match="fee_mode"):
        ex.add_account("xs-bad", SECRET, {}, fee_mode="usdt")
    with FakeBinance(history_s=10, live_rate=0) as plain, pytest.raises(ValueError, match="BNB"):
        plain.add_account("xs-bnb", SECRET, {}, fee_mode="bnb")


# --- helpers: balances and prices ------------------------------------------------------------
def test_set_balance_changes_the_free_balance_and_keeps_what_is_locked(ex):
    key, client = open_account(ex, {"USDT": 1000, "BTC": "0.5"}, "quote")
    client.create_limit_sell_order(BTC, 0.2, 40_000)  # locks 0.2 BTC
    ex.set_balance(key, "BTC", "0.1")  # a withdrawal of 0.2 of the 0.3 free
    ex.set_balance(key, "ETH", 2)  # a deposit of a new asset
    assert ex.balance(key) == {"USDT": D(1000), "BTC": D("0.1"), "ETH": D(2)}
    assert ex.total_balance(key) == {"USDT": D(1000), "BTC": D("0.3"), "ETH": D(2)}
    balance = client.fetch_balance()
    assert (balance["BTC"]["free"], balance["BTC"]["used"], balance["ETH"]["total"]) == (
        0.1, 0.2, 2.0,
    )  # fmt: skip
    with pytest.raises(ccxt.InsufficientFunds):  # 0.2 BTC is no longer free
        client.create_market_sell_order(BTC, 0.2)


def test_set_price_pins_the_price_market_orders_fill_at(ex):
    key, client = open_account(ex, {"USDT": 1000}, "quote")
    trade_id = ex.set_price(BTC, "25000.10")
    assert ex.last_price(BTC) == D("25000.10")
    assert ex.trades(BTC)[-1]["a"] == trade_id and ex.trades(BTC)[-1]["p"] == "25000.10000000"
    assert client.fetch_ticker(BTC)["last"] == 25000.10
    order = client.create_market_buy_order_with_cost(BTC, 100)  # 0.0039999 -> 0.00399
    assert order["filled"] == 0.00399
    assert order["info"]["fills"][0]["price"] == "25000.10000000"
    assert ex.balance(key) == {"USDT": D("900.1498506"), "BTC": D("0.00399")}  # -99.750399 - fee
    assert ex.last_price(BTC) == D("25000.10")  # live_rate=0: nothing moved it
    with pytest.raises(ValueError, match="tick"):
        ex.set_price(BTC, "1.005")


# --- filters ---------------------------------------------------------------------------------
def exchange_info(server: FakeBinance) -> dict[str, Any]:
    with urllib.request.urlopen(server.rest_url + "/api/v3/exchangeInfo", timeout=5) as answer:
        return json.loads(answer.read())


def test_default_filters_are_unchanged():
    with FakeBinance(history_s=10, live_rate=0) as server:
        info = exchange_info(server)
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
        assert all(s["filters"] == FILTERS for s in info["symbols"])


def test_a_lot_step_sets_ccxt_precision_and_refuses_quantities_off_the_step():
    with FakeBinance(history_s=10, live_rate=0, lot_step="0.001", min_qty="0.002") as server:
        server.set_price(BTC, "30000")
        key, client = open_account(server, {"USDT": 1000, "BTC": 1})
        market = client.load_markets()[BTC]
        assert market["precision"]["amount"] == 0.001
        assert market["limits"]["amount"]["min"] == 0.002
        lot = exchange_info(server)["symbols"][0]["filters"][1]
        assert (lot["filterType"], lot["stepSize"], lot["minQty"]) == (
            "LOT_SIZE", "0.00100000", "0.00200000",
        )  # fmt: skip
        # ccxt truncates amounts to the step itself, so send the raw quantities signed.
        for quantity in ("0.0015", "0.001", "0.0025"):  # off the step, below minQty, off
            with pytest.raises(ccxt.InvalidOrder, match="Filter failure: LOT_SIZE"):
                client.private_post_order({"symbol": "BTCUSDT", "side": "SELL",
                                           "type": "MARKET", "quantity": quantity})  # fmt: skip
        assert server.orders(key) == []
        assert server.balance(key) == {"USDT": D(1000), "BTC": D(1)}
        # quoteOrderQty: 100 / 30000 = 0.00333... rounds down to the step, 0.003
        order = client.create_market_buy_order_with_cost(BTC, 100)
        assert order["filled"] == 0.003
        assert moved({"USDT": D(1000), "BTC": D(1)}, server.balance(key)) == {
            "USDT": D("-90.09"), "BTC": D("0.003"),
        }  # fmt: skip
        sell = client.create_market_sell_order(BTC, 0.002)  # minQty itself passes
        assert sell["filled"] == 0.002


def test_a_min_notional_refuses_smaller_orders():
    with FakeBinance(history_s=10, live_rate=0, min_notional="50") as server:
        server.set_price(BTC, "30000")
        key, client = open_account(server, {"USDT": 1000})
        assert client.load_markets()[BTC]["limits"]["cost"]["min"] == 50
        with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
            client.create_market_buy_order_with_cost(BTC, 20)
        with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
            client.create_limit_buy_order(BTC, 0.00166, 30_000)  # 49.80
        # quoteOrderQty 50 buys 0.00166 BTC (rounded down to the step): 49.80, refused too
        with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
            client.create_market_buy_order_with_cost(BTC, 50)
        assert server.orders(key) == [] and server.balance(key) == {"USDT": D(1000)}
        order = client.create_market_buy_order_with_cost(BTC, 60)
        assert (order["status"], order["filled"]) == ("closed", 0.002)
        assert server.balance(key) == {"USDT": D("939.94"), "BTC": D("0.002")}


def test_filters_are_checked():
    for bad in ({"lot_step": "0"}, {"lot_step": "0.000000001"}, {"min_notional": "-1"}):
        with pytest.raises(ValueError):
            FakeBinance(**bad)
