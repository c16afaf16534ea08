"""The paper book equals the backtest engine bit for bit, and the risk rules decide as documented
(both pure: no database)."""

from __future__ import annotations

import numpy as np
import pytest

from backtests.engine import simulate
from bots import paper, risk


def replay(open_, high, low, close, signals, **opts):
    """Drive a PaperBook candle by candle in the bots' order: the pending order fills at the
    open, then the stops, then the signal of the candle becomes the pending order."""
    book = paper.PaperBook(cash=10_000.0)
    fills, trades, equity = [], [], []
    pending = 0
    stops = {k: opts.get(k) for k in ("stop_loss", "take_profit", "trailing_stop")}
    costs = {"fee": opts["fee"], "slippage": opts["slippage"]}
    for i in range(len(close)):
        if pending == 1:
            f = paper.buy(book, open_[i], size=opts["size"], time_ms=i, **costs)
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


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "stops",
    [{}, {"stop_loss": 0.01}, {"take_profit": 0.008, "trailing_stop": 0.006},
     {"stop_loss": 0.004, "take_profit": 0.01, "trailing_stop": 0.005}],
)  # fmt: skip
def test_paper_book_equals_engine_bit_for_bit(seed, stops):
    rng = np.random.default_rng(seed)
    n = 600
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    open_ = np.r_[100.0, close[:-1]] * (1 + rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, n)))
    signals = rng.choice([-1, 0, 0, 0, 1], n).astype(np.int8)
    opts = {"fee": 0.001, "slippage": 0.0007, "size": 0.8, **stops}

    _, _, trades, equity = replay(open_, high, low, close, signals, **opts)
    sim = simulate(open_, high, low, close, signals, options={"cash": 10_000.0, **opts})

    assert len(trades) == sim.trades.count > 5
    np.testing.assert_array_equal(equity, sim.equity)  # exact, not approximately
    got = np.array([[t.entry_ms, t.exit_ms] for t in trades])
    np.testing.assert_array_equal(got, np.c_[sim.trades.entry_bar, sim.trades.exit_bar])
    for name, ours in (("units", "units"), ("entry_price", "entry_price"),
                       ("exit_price", "exit_price"), ("fees", "fees"), ("pnl", "pnl"),
                       ("ret", "ret")):  # fmt: skip
        np.testing.assert_array_equal([getattr(t, ours) for t in trades], getattr(sim.trades, name))
    reasons = ["open", "signal", "stop_loss", "take_profit", "trailing_stop", "end"]
    assert [t.reason for t in trades] == [reasons[r] for r in sim.trades.reason]


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
