"""The paper book equals the backtest engine bit for bit, and the risk rules decide as documented
(both pure: no database)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtests.engine import _S_CASH, _S_COMMITTED, _S_ENTRY_FEE, _S_UNITS, simulate
from bots import paper, risk
from tests.backtests.test_engine import PROPERTY, fractions, market


def replay(open_, high, low, close, signals, *, cash=10_000.0, **opts):
    """Drive a PaperBook candle by candle in the bots' order: the pending order fills at the
    open, then the stops, then the signal of the candle becomes the pending order."""
    book = paper.PaperBook(cash=cash)
    fills, trades, equity = [], [], []
    pending = 0
    stops = {k: opts.get(k) for k in ("stop_loss", "take_profit", "trailing_stop")}
    costs = {"fee": opts["fee"], "slippage": opts["slippage"]}
    fee_in_base = opts.get("fee_in_base", False)
    for i in range(len(close)):
        if pending == 1:
            f = paper.buy(book, open_[i], size=opts["size"], time_ms=i, fee_in_base=fee_in_base,
                          **costs)  # fmt: skip
            fills += [f] if f else []
        elif pending == -1:
            out = paper.sell(book, open_[i], time_ms=i, reason="signal", **costs)
            if out:
                fills.append(out[0])
                trades.append(out[1])
        pending = 0
        hit = paper.stop_exit(book, open_[i], high[i], low[i], **stops)
        if hit:
            f, t = paper.sell(book, hit[1], time_ms=i, reason=hit[0], **costs)
            fills.append(f)
            trades.append(t)
        else:
            paper.take_in_high(book, high[i])
        if (signals[i] == 1 and not book.long) or (signals[i] == -1 and book.long):
            pending = int(signals[i])
        equity.append(book.equity(close[i]))
    return book, fills, trades, np.array(equity)


def assert_paper_equals_engine(trades, equity, sim) -> None:
    """The paper replay's trades and equity are the simulation's, to the bit."""
    assert len(trades) == sim.trades.count
    np.testing.assert_array_equal(equity, sim.equity)  # exact, not approximately
    got = np.array([[t.entry_ms, t.exit_ms] for t in trades], dtype=np.int64).reshape(-1, 2)
    np.testing.assert_array_equal(got, np.c_[sim.trades.entry_bar, sim.trades.exit_bar])
    for name in ("units", "entry_price", "exit_price", "fees", "pnl", "ret"):
        np.testing.assert_array_equal([getattr(t, name) for t in trades], getattr(sim.trades, name))
    reasons = ["open", "signal", "stop_loss", "take_profit", "trailing_stop", "end"]
    assert [t.reason for t in trades] == [reasons[r] for r in sim.trades.reason]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "stops",
    [{}, {"stop_loss": 0.01}, {"take_profit": 0.008, "trailing_stop": 0.006},
     {"stop_loss": 0.004, "take_profit": 0.01, "trailing_stop": 0.005}],
)  # fmt: skip
@pytest.mark.parametrize("fee_in_base", [False, True])
def test_paper_book_equals_engine_bit_for_bit(seed, stops, fee_in_base):
    rng = np.random.default_rng(seed)
    n = 600
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    open_ = np.r_[100.0, close[:-1]] * (1 + rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, n)))
    signals = rng.choice([-1, 0, 0, 0, 1], n).astype(np.int8)
    opts = {"fee": 0.001, "slippage": 0.0007, "size": 0.8, "fee_in_base": fee_in_base, **stops}

    book, _, trades, equity = replay(open_, high, low, close, signals, **opts)
    sim = simulate(open_, high, low, close, signals, options={"cash": 10_000.0, **opts})

    assert len(trades) == sim.trades.count > 5
    assert_paper_equals_engine(trades, equity, sim)
    assert book.cash == sim.state[_S_CASH] and book.units == sim.state[_S_UNITS]


@PROPERTY
@given(
    case=market(),
    cash=fractions(100.0, 1e6),
    fee=st.one_of(st.just(0.0), fractions(0.0, 0.02)),
    slippage=st.one_of(st.just(0.0), fractions(0.0, 0.02)),
    size=st.one_of(st.just(1.0), fractions(0.05, 1.0)),
    stop_loss=st.one_of(st.none(), fractions(0.005, 0.2)),
    take_profit=st.one_of(st.none(), fractions(0.005, 0.3)),
    trailing_stop=st.one_of(st.none(), fractions(0.005, 0.2)),
    fee_in_base=st.booleans(),
)
def test_paper_equals_engine_on_random_candles(
    case, cash, fee, slippage, size, stop_loss, take_profit, trailing_stop, fee_in_base
):
    """Random candles (gaps, levels hit exactly) and signals: the paper book's buys, sells and
    stops equal the engine's simulation bit for bit, the fee in the coin bought or in quote."""
    data, signals = case
    prices = [data[c].to_numpy() for c in ("open", "high", "low", "close")]
    opts = {"fee": fee, "slippage": slippage, "size": size, "stop_loss": stop_loss,
            "take_profit": take_profit, "trailing_stop": trailing_stop,
            "fee_in_base": fee_in_base}  # fmt: skip
    book, fills, trades, equity = replay(*prices, signals, cash=cash, **opts)
    sim = simulate(*prices, signals, options={"cash": cash, **opts})
    assert_paper_equals_engine(trades, equity, sim)
    assert book.cash == sim.state[_S_CASH] and book.units == sim.state[_S_UNITS]
    assert book.entry_fee == sim.state[_S_ENTRY_FEE]
    assert book.committed == sim.state[_S_COMMITTED]
    for f in fills:
        assert f.fee >= 0.0 and f.units > 0.0


def test_paper_buy_with_the_fee_in_base():
    """The exchange keeps 1 % of the coin bought: the cash pays the notional alone, the book
    holds the rest, the fill reports the coin bought and the fee valued in quote."""
    book = paper.PaperBook(cash=1_000.0)
    fill = paper.buy(book, 50.0, fee=0.01, slippage=0.002, size=0.5, time_ms=7,
                     fee_in_base=True)  # fmt: skip
    price = 50.0 * 1.002
    gross = 500.0 / price
    assert (fill.side, fill.price, fill.units, fill.time_ms) == ("buy", price, gross, 7)
    assert fill.fee == gross * 0.01 * price
    assert book.units == gross - gross * 0.01
    assert book.cash == 1_000.0 - gross * price
    assert book.cash == pytest.approx(500.0, rel=1e-12)
    assert (book.entry_price, book.entry_fee, book.committed) == (price, fill.fee, 500.0)
    exit_fill, trade = paper.sell(book, 60.0, fee=0.01, slippage=0.0, time_ms=9, reason="signal")
    # The P&L is the money out of the round trip less the money in; the exit's fee in quote.
    assert exit_fill.fee == trade.units * 60.0 * 0.01
    assert trade.pnl == pytest.approx(book.cash - 1_000.0, rel=1e-12)
    assert trade.fees == fill.fee + exit_fill.fee
    # Off, the fee is paid in quote on top of the notional: other units, the fill the same.
    default = paper.PaperBook(cash=1_000.0)
    quote_fill = paper.buy(default, 50.0, fee=0.01, slippage=0.002, size=0.5, time_ms=7)
    assert quote_fill.units == default.units == 500.0 / (price * 1.01)
    assert default.units != gross - gross * 0.01


def test_paper_book_round_trips_through_json_exactly():
    import json

    book = paper.PaperBook(cash=1 / 3, units=2 / 7, entry_price=101.123456789, extreme=1e-7)
    again = paper.PaperBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert again == book


def ctx(**kw):
    base = {"long": False, "cash": 1000.0, "equity": 1000.0, "day_start_equity": 1000.0}
    return risk.EntryContext(**(base | kw))


def test_risk_hold_and_position_rules():
    limits = risk.RiskLimits()
    assert risk.assess("HOLD", ctx(), limits).side is None
    assert risk.assess("BUY", ctx(), limits).side == "buy"
    no = risk.assess("BUY", ctx(long=True), limits)
    assert no.side is None and "already long" in no.reason
    no = risk.assess("SELL", ctx(), limits)
    assert no.side is None and "nothing to sell" in no.reason
    assert risk.assess("SELL", ctx(long=True, cooldown_left=5), limits).side == "sell"


def test_risk_cooldown_blocks_entries_only():
    limits = risk.RiskLimits(cooldown_candles=3)
    blocked = risk.assess("BUY", ctx(cooldown_left=2), limits)
    assert blocked.side is None and blocked.reason.startswith("cooldown:")
    assert {c.name: c.passed for c in blocked.checks}["cooldown"] is False
    assert risk.assess("BUY", ctx(cooldown_left=0), limits).side == "buy"


def test_risk_daily_loss_blocks_entries_and_is_breached_at_the_limit():
    limits = risk.RiskLimits(max_daily_loss=0.05)
    assert risk.assess("BUY", ctx(equity=951.0, cash=951.0), limits).side == "buy"
    blocked = risk.assess("BUY", ctx(equity=950.0, cash=950.0), limits)
    assert blocked.side is None and "daily_loss" in blocked.reason
    assert risk.daily_loss_breached(limits, 1000.0, 950.0)
    assert not risk.daily_loss_breached(risk.RiskLimits(), 1000.0, 1.0)


def test_risk_exposure_budget_counts_other_bots_and_this_entry():
    limits = risk.RiskLimits(max_position_fraction=0.5)
    ok = risk.assess("BUY", ctx(exposure_other=1000.0, exposure_budget=1500.0), limits)
    assert ok.side == "buy"
    blocked = risk.assess("BUY", ctx(exposure_other=1001.0, exposure_budget=1500.0), limits)
    assert blocked.side is None and blocked.reason.startswith("exposure:")
    assert [c["name"] for c in blocked.checks_json()] == [
        "position", "cooldown", "exposure", "equity",
    ]  # fmt: skip
