"""The trade simulation kernel: a plain-Python reference on random data (Hypothesis), and small
hand-checked cases for each convention of ``backtests.engine``."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtests.engine import (
    _S_CASH,
    _S_COMMITTED,
    _S_ENTRY_FEE,
    _S_ENTRY_PRICE,
    _S_UNITS,
    EXIT_REASONS,
    EngineOptions,
    backtest_metrics,
    batch_metrics,
    initial_state,
    run_backtest,
    simulate,
)
from backtests.metrics import bars_per_year
from strategies.builtin import SMACrossover
from strategies.lookahead import random_walk_ohlcv
from tests.backtests.support import Scripted, flat_bars, frame

# ---------------------------------------------------------------------------------------------
# The reference: the conventions of the engine's docstring, written out the slow, obvious way.
# ---------------------------------------------------------------------------------------------


@dataclass
class Position:
    side: int  # +1 long, -1 short
    units: float
    entry_price: float
    entry_fee: float
    entry_bar: int
    committed: float
    best: float  # highest high (long) / lowest low (short) seen before the current bar


def fee_in_base_entry(cash: float, price: float, fee: float, slippage: float, size: float):
    """A long entry whose fee the exchange takes from the coin bought, from its meaning: spend
    ``cash * size`` at the fill, receive that much coin, give up ``fee`` of it. Returns
    ``(cash left, units held, fill, fee valued in quote, committed)``."""
    committed = cash * size
    fill = price * (1 + slippage)
    bought = committed / fill
    withheld = bought * fee
    return cash - bought * fill, bought - withheld, fill, withheld * fill, committed


def reference(
    o, h, lo, c, signals, *, cash, fee, slippage, size, fill, allow_short, stop_loss,
    take_profit, trailing_stop, close_at_end, fee_in_base=False,
):  # fmt: skip
    """Returns (equity per bar, cash per bar, position per bar, trades as dicts)."""
    money = float(cash)
    pos: Position | None = None
    trades: list[dict] = []
    equity, cash_path, side_path = [], [], []
    pending = 0

    def worse(price: float, buying: bool) -> float:
        return price * (1 + slippage) if buying else price * (1 - slippage)

    def enter(side: int, price: float, bar: int) -> None:
        nonlocal money, pos
        if money <= 0:
            return
        if side == 1 and fee_in_base:
            money, units, fill_price, paid, committed = fee_in_base_entry(
                money, price, fee, slippage, size
            )
            pos = Position(side, units, fill_price, paid, bar, committed, fill_price)
            return
        fill_price = worse(price, buying=side == 1)
        committed = money * size
        units = committed / (fill_price * (1 + fee))
        paid = units * fill_price * fee
        if side == 1:
            money -= units * fill_price + paid
        else:
            money += units * fill_price - paid
        pos = Position(side, units, fill_price, paid, bar, committed, fill_price)

    def leave(price: float, bar: int, reason: str) -> None:
        nonlocal money, pos
        fill_price = worse(price, buying=pos.side == -1)
        paid = pos.units * fill_price * fee
        if pos.side == 1:
            money += pos.units * fill_price - paid
        else:
            money -= pos.units * fill_price + paid
        pnl = pos.side * pos.units * (fill_price - pos.entry_price) - pos.entry_fee - paid
        trades.append(
            {
                "entry_bar": pos.entry_bar,
                "exit_bar": bar,
                "side": pos.side,
                "units": pos.units,
                "entry_price": pos.entry_price,
                "exit_price": fill_price,
                "fees": pos.entry_fee + paid,
                "pnl": pnl,
                "return": pnl / pos.committed,
                "reason": reason,
            }
        )
        pos = None

    def act(signal: int, price: float, bar: int) -> None:
        if signal == 0:
            return
        if pos is not None and pos.side == signal:
            return  # already on that side
        if pos is not None:
            leave(price, bar, "signal")
        if signal == 1 or allow_short:
            enter(signal, price, bar)

    def check_stops(i: int) -> None:
        long = pos.side == 1
        candidates = []  # (level, reason); stop-loss listed first so it wins a tie
        if stop_loss is not None:
            candidates.append(
                (pos.entry_price * (1 - stop_loss if long else 1 + stop_loss), "stop_loss")
            )
        if trailing_stop is not None:
            candidates.append(
                (pos.best * (1 - trailing_stop if long else 1 + trailing_stop), "trailing_stop")
            )
        stop = None
        for level, reason in candidates:
            if stop is None or (level > stop[0] if long else level < stop[0]):
                stop = (level, reason)
        target = None
        if take_profit is not None:
            target = pos.entry_price * (1 + take_profit if long else 1 - take_profit)
        if stop is not None:
            level, reason = stop
            gapped = o[i] <= level if long else o[i] >= level
            touched = lo[i] <= level if long else h[i] >= level
            if gapped or touched:
                leave(o[i] if gapped else level, i, reason)
                return
        if target is not None:
            gapped = o[i] >= target if long else o[i] <= target
            touched = h[i] >= target if long else lo[i] <= target
            if gapped or touched:
                leave(o[i] if gapped else target, i, "take_profit")
                return
        pos.best = max(pos.best, h[i]) if long else min(pos.best, lo[i])

    n = len(c)
    for i in range(n):
        if fill == "next_open" and pending:
            act(pending, o[i], i)
        pending = 0
        if pos is not None:
            check_stops(i)
        if fill == "close":
            act(signals[i], c[i], i)
        else:
            pending = signals[i]
        if close_at_end and i == n - 1 and pos is not None:
            leave(c[i], i, "end")
        value = 0.0 if pos is None else pos.side * pos.units * c[i]
        equity.append(money + value)
        cash_path.append(money)
        side_path.append(0 if pos is None else pos.side)
    if pos is not None:
        pnl = pos.side * pos.units * (c[-1] - pos.entry_price) - pos.entry_fee
        trades.append(
            {
                "entry_bar": pos.entry_bar,
                "exit_bar": -1,
                "side": pos.side,
                "units": pos.units,
                "entry_price": pos.entry_price,
                "exit_price": c[-1],
                "fees": pos.entry_fee,
                "pnl": pnl,
                "return": pnl / pos.committed,
                "reason": "open",
            }
        )
    return equity, cash_path, side_path, trades


# ---------------------------------------------------------------------------------------------
# Random data
# ---------------------------------------------------------------------------------------------


@st.composite
def market(draw: st.DrawFn) -> tuple[pd.DataFrame, np.ndarray]:
    """Random consistent candles (with gaps between close and next open) and random signals."""
    n = draw(st.integers(1, 60))
    moves = st.floats(-0.08, 0.08, allow_nan=False)
    price = draw(st.floats(20.0, 500.0))
    o, h, lo, c = [], [], [], []
    for _ in range(n):
        # Rounded to cents so that levels and prices sometimes coincide exactly.
        open_ = round(price * math.exp(draw(moves) / 2), 2)
        close = round(open_ * math.exp(draw(moves)), 2)
        high = round(max(open_, close) * (1 + abs(draw(moves)) / 2), 2)
        low = round(min(open_, close) * (1 - abs(draw(moves)) / 2), 2)
        o.append(open_)
        h.append(high)
        lo.append(max(low, 0.01))
        c.append(close)
        price = min(max(close, 10.0), 1_000.0)  # keeps cents meaningful
    signals = draw(st.lists(st.sampled_from([-1, 0, 0, 0, 1]), min_size=n, max_size=n))
    return frame(o, h, lo, c, signals), np.asarray(signals, dtype=np.int8)


def fractions(low: float, high: float) -> st.SearchStrategy:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


@st.composite
def engine_options(draw: st.DrawFn) -> EngineOptions:
    """Any valid settings: shorts, a fee taken from the coin bought (spot, so never both), or
    neither."""
    allow_short, fee_in_base = draw(st.sampled_from([(False, False), (True, False),
                                                      (False, True)]))  # fmt: skip
    return EngineOptions(
        cash=draw(fractions(100.0, 1e6)),
        fee=draw(st.one_of(st.just(0.0), fractions(0.0, 0.02))),
        slippage=draw(st.one_of(st.just(0.0), fractions(0.0, 0.02))),
        size=draw(st.one_of(st.just(1.0), fractions(0.05, 1.0))),
        fill=draw(st.sampled_from(["next_open", "close"])),
        allow_short=allow_short,
        stop_loss=draw(st.one_of(st.none(), fractions(0.005, 0.2))),
        take_profit=draw(st.one_of(st.none(), fractions(0.005, 0.3))),
        trailing_stop=draw(st.one_of(st.none(), fractions(0.005, 0.2))),
        close_at_end=draw(st.booleans()),
        fee_in_base=fee_in_base,
    )


options_strategy = engine_options()


def run_reference(data: pd.DataFrame, signals: np.ndarray, options: EngineOptions):
    return reference(
        data["open"].tolist(),
        data["high"].tolist(),
        data["low"].tolist(),
        data["close"].tolist(),
        signals.tolist(),
        **options.as_dict(),
    )


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(market(), options_strategy)
def test_run_backtest_equals_the_reference(case, options) -> None:
    data, signals = case
    result = run_backtest(data, Scripted, {}, **options.as_dict())
    equity, _, sides, trades = run_reference(data, signals, options)

    np.testing.assert_allclose(result.equity.to_numpy(), equity, rtol=1e-9, atol=1e-9)
    assert result.position.tolist() == sides
    got = result.trades
    assert len(got) == len(trades)
    expected = pd.DataFrame(trades, columns=list(trades[0]) if trades else None)
    if trades:
        assert got["entry_bar"].tolist() == expected["entry_bar"].tolist()
        assert got["exit_bar"].tolist() == expected["exit_bar"].tolist()
        assert got["side"].tolist() == ["long" if s == 1 else "short" for s in expected["side"]]
        assert got["exit_reason"].tolist() == expected["reason"].tolist()
        # Prices do not depend on the cash: the same formulas give the same bits.
        assert got["entry_price"].tolist() == expected["entry_price"].tolist()
        assert got["exit_price"].tolist() == expected["exit_price"].tolist()
        for column in ("fees", "pnl", "return"):
            np.testing.assert_allclose(got[column], expected[column], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got["size"], expected["units"], rtol=1e-9)
    assert result.metrics["final_equity"] == result.equity.iloc[-1]
    assert result.metrics["n_trades"] == sum(t["reason"] != "open" for t in trades)


@PROPERTY
@given(market(), options_strategy)
def test_simulation_money_invariants(case, options) -> None:
    """Equity is cash plus the position's value at every bar; fees are never negative; no fill
    happens before its signal's bar has closed; trades add up to the final equity."""
    data, signals = case
    result = run_backtest(data, Scripted, {}, **options.as_dict())
    trades = result.trades
    close = data["close"].to_numpy()
    equity = result.equity.to_numpy()
    assert (trades["fees"] >= 0).all()
    assert (trades["size"] > 0).all()

    # Equity = starting cash + closed profits + the open trade's value, bar by bar.
    realised = np.zeros(len(data))
    for trade in trades.itertuples():
        if trade.exit_bar >= 0:
            realised[trade.exit_bar :] += trade.pnl
    expected = options.cash + realised
    for trade in trades.itertuples():
        end = trade.exit_bar if trade.exit_bar >= 0 else len(data)
        held = slice(trade.entry_bar, end)
        side = 1 if trade.side == "long" else -1
        # While held (after the entry bar's close, before the exit bar): cash + units * close.
        value = side * trade.size * (close[held] - trade.entry_price) - (
            trade.fees if trade.exit_bar < 0 else trade.fees - _exit_fee(trade, options)
        )
        expected[held] += value
    np.testing.assert_allclose(equity, expected, rtol=1e-9, atol=1e-7 * options.cash)
    total_pnl = trades["pnl"].sum()
    assert equity[-1] == pytest.approx(options.cash + total_pnl, rel=1e-9, abs=1e-7)

    # Causality: entries and signal exits fill after the signal's bar has closed.
    for trade in trades.itertuples():
        side = 1 if trade.side == "long" else -1
        lag = 1 if options.fill == "next_open" else 0
        assert signals[trade.entry_bar - lag] == side
        assert trade.entry_bar - lag >= 0
        if trade.exit_reason == "signal":
            assert signals[trade.exit_bar - lag] == -side
        if trade.exit_reason in ("stop_loss", "take_profit", "trailing_stop"):
            assert trade.exit_bar >= trade.entry_bar + (1 - lag)


def _exit_fee(trade, options: EngineOptions) -> float:
    return trade.size * trade.exit_price * options.fee


@PROPERTY
@given(market(), options_strategy, st.data())
def test_simulation_continues_across_batches_exactly(case, options, data_strategy) -> None:
    """Any split into batches, each continuing from the previous state, equals one pass (with
    ``close_at_end`` on the last batch only: it means the end of the data)."""
    data, signals = case
    arrays = [data[c].to_numpy() for c in ("open", "high", "low", "close")]
    whole = simulate(*arrays, signals, options=options)
    n = len(data)
    cuts = sorted(set(data_strategy.draw(st.lists(st.integers(0, n), max_size=4))))
    state = initial_state(options.cash)
    between = EngineOptions(**{**options.as_dict(), "close_at_end": False})
    equity, trades = [], []
    for start, stop in zip([0, *cuts], [*cuts, n], strict=True):
        part = simulate(
            *(a[start:stop] for a in arrays),
            signals[start:stop],
            options=options if stop == n else between,
            state=state,
            offset=start,
        )
        state = part.state
        equity.append(part.equity)
        trades.append(part.trades)
    assert np.array_equal(np.concatenate(equity), whole.equity)
    for name, values in zip(whole.trades._fields, whole.trades, strict=True):
        joined = np.concatenate([getattr(t, name) for t in trades])
        assert np.array_equal(joined, values), name
    assert np.array_equal(state, whole.state)


@PROPERTY
@given(market(), options_strategy, st.data())
def test_simulation_never_looks_ahead(case, options, data_strategy) -> None:
    """The equity and trades up to bar k do not change when the bars after k change."""
    data, signals = case
    n = len(data)
    k = data_strategy.draw(st.integers(0, n - 1))
    options = EngineOptions(**{**options.as_dict(), "close_at_end": False})
    arrays = [data[c].to_numpy() for c in ("open", "high", "low", "close")]
    whole = simulate(*arrays, signals, options=options)
    prefix = simulate(*(a[: k + 1] for a in arrays), signals[: k + 1], options=options)
    assert np.array_equal(prefix.equity, whole.equity[: k + 1])
    closed = whole.trades.exit_bar <= k
    assert np.array_equal(prefix.trades.exit_bar, whole.trades.exit_bar[closed])
    assert np.array_equal(prefix.trades.pnl, whole.trades.pnl[closed])


# ---------------------------------------------------------------------------------------------
# Hand-checked conventions
# ---------------------------------------------------------------------------------------------


def bars(
    opens: list[float], highs: list[float], lows: list[float], closes: list[float], sig: list[int]
) -> pd.DataFrame:
    return frame(opens, highs, lows, closes, sig)


UP = bars(
    [10, 11, 12, 13, 14],
    [10.5, 11.5, 12.5, 13.5, 14.5],
    [9.5, 10.5, 11.5, 12.5, 13.5],
    [10.5, 11.5, 12.5, 13.5, 14.5],
    [1, 0, -1, 0, 0],
)


def test_next_open_fill_trades_at_the_following_open() -> None:
    result = run_backtest(UP, Scripted, fee=0.0)
    (trade,) = result.trades.itertuples()
    units = 10_000 / 11
    assert (trade.entry_bar, trade.exit_bar) == (1, 3)
    assert trade.entry_time == UP.index[1] and trade.exit_time == UP.index[3]
    assert (trade.entry_price, trade.exit_price) == (11.0, 13.0)
    assert trade.size == pytest.approx(units)
    assert trade.exit_reason == "signal" and trade.side == "long"
    assert result.equity.tolist() == pytest.approx(
        [10_000, units * 11.5, units * 12.5, units * 13, units * 13]
    )
    assert result.position.tolist() == [0, 1, 1, 0, 0]


def test_close_fill_trades_at_the_signal_bars_close() -> None:
    result = run_backtest(UP, Scripted, fee=0.0, fill="close")
    (trade,) = result.trades.itertuples()
    assert (trade.entry_bar, trade.exit_bar) == (0, 2)
    assert (trade.entry_price, trade.exit_price) == (10.5, 12.5)
    assert result.equity.iloc[-1] == pytest.approx(10_000 / 10.5 * 12.5)


def test_fee_and_slippage_arithmetic() -> None:
    result = run_backtest(UP, Scripted, fee=0.01, slippage=0.02)
    (trade,) = result.trades.itertuples()
    entry = 11 * 1.02
    units = 10_000 / (entry * 1.01)
    entry_fee = units * entry * 0.01
    exit_ = 13 * 0.98
    exit_fee = units * exit_ * 0.01
    assert trade.entry_price == pytest.approx(entry)
    assert trade.exit_price == pytest.approx(exit_)
    assert trade.size == pytest.approx(units)
    assert trade.fees == pytest.approx(entry_fee + exit_fee)
    assert trade.pnl == pytest.approx(units * (exit_ - entry) - entry_fee - exit_fee)
    assert trade.pnl == pytest.approx(units * exit_ - exit_fee - 10_000)
    assert result.trades["return"].iloc[0] == pytest.approx(trade.pnl / 10_000)
    assert result.equity.iloc[1] == pytest.approx(units * 11.5)  # cash ~ 0 after the entry
    assert result.equity.iloc[-1] == pytest.approx(10_000 + trade.pnl)


def test_size_commits_a_fraction_of_equity_fee_included() -> None:
    result = run_backtest(UP, Scripted, fee=0.01, size=0.5)
    (trade,) = result.trades.itertuples()
    units = 5_000 / (11 * 1.01)
    assert trade.size == pytest.approx(units)
    # Cash left after the entry is exactly the other half; the position is marked at the close.
    assert result.equity.iloc[1] == pytest.approx(5_000 + units * 11.5)
    assert result.trades["return"].iloc[0] == pytest.approx(trade.pnl / 5_000)


def test_open_position_at_the_end_is_valued_at_the_last_close() -> None:
    data = bars([10, 11, 12], [10, 12, 13], [10, 10, 11], [10, 11.5, 12.5], [1, 0, 0])
    result = run_backtest(data, Scripted, fee=0.001)
    (trade,) = result.trades.itertuples()
    units = 10_000 / (11 * 1.001)
    entry_fee = units * 11 * 0.001
    assert trade.exit_reason == "open"
    assert pd.isna(trade.exit_time) and trade.exit_bar == -1
    assert trade.exit_price == 12.5
    assert trade.fees == pytest.approx(entry_fee)
    assert trade.pnl == pytest.approx(units * (12.5 - 11) - entry_fee)
    assert result.equity.iloc[-1] == pytest.approx(10_000 + trade.pnl)
    assert result.metrics["n_trades"] == 0 and result.metrics["open_trades"] == 1
    closed = run_backtest(data, Scripted, fee=0.001, slippage=0.01, close_at_end=True)
    (trade,) = closed.trades.itertuples()
    assert trade.exit_reason == "end" and trade.exit_bar == 2
    assert trade.exit_price == pytest.approx(12.5 * 0.99)
    assert closed.position.iloc[-1] == 0


def test_signal_on_the_last_bar_is_not_executed_with_next_open_fills() -> None:
    data = flat_bars([10, 10, 10], [0, 0, 1])
    assert run_backtest(data, Scripted).trades.empty
    assert run_backtest(data, Scripted).equity.tolist() == [10_000] * 3
    with_close = run_backtest(data, Scripted, fill="close")
    assert with_close.trades["exit_reason"].tolist() == ["open"]
    assert with_close.trades["entry_bar"].tolist() == [2]


def test_repeated_buys_while_long_are_ignored() -> None:
    data = flat_bars([10, 10, 10, 10, 10, 10], [1, 1, 1, 0, -1, 0])
    trades = run_backtest(data, Scripted, fee=0.0).trades
    assert trades[["entry_bar", "exit_bar"]].values.tolist() == [[1, 5]]


def test_sell_when_flat_does_nothing_unless_shorts_are_allowed() -> None:
    data = bars([100, 100, 90, 80], [100, 100, 90, 80], [100, 100, 90, 80], [100, 100, 90, 80],
                [-1, 0, 1, 0])  # fmt: skip
    assert run_backtest(data, Scripted, fee=0.0).trades["exit_reason"].tolist() == ["open"]
    assert run_backtest(data, Scripted, fee=0.0).trades["entry_bar"].tolist() == [3]
    short = run_backtest(data, Scripted, fee=0.0, allow_short=True)
    first = short.trades.iloc[0]
    assert (first["side"], first["entry_bar"], first["exit_bar"]) == ("short", 1, 3)
    assert first["entry_price"] == 100 and first["exit_price"] == 80
    units = 10_000 / 100
    assert first["pnl"] == pytest.approx(units * 20)
    # Cash after the short entry is 20,000 (10,000 + the sale); the position owes 100 units.
    assert short.equity.tolist() == pytest.approx([10_000, 10_000, 11_000, 12_000])


def test_buy_when_short_reverses_into_a_long() -> None:
    data = flat_bars([100, 100, 80, 80, 90], [-1, 0, 1, 0, 0])
    result = run_backtest(data, Scripted, fee=0.001, allow_short=True)
    short, long = result.trades.itertuples()
    assert (short.side, short.exit_bar, short.exit_reason) == ("short", 3, "signal")
    assert (long.side, long.entry_bar, long.exit_reason) == ("long", 3, "open")
    assert short.exit_price == long.entry_price == 80
    # The long is bought with everything the short left: 10,000 + profit, entry fee included.
    cash_after_short = 10_000 + short.pnl
    assert long.size == pytest.approx(cash_after_short / (80 * 1.001))
    sell_reverses = run_backtest(flat_bars([100, 100, 120, 120], [1, 0, -1, 0]), Scripted,
                                 allow_short=True)  # fmt: skip
    assert sell_reverses.trades["side"].tolist() == ["long", "short"]


def test_stop_loss_wins_when_both_levels_are_hit_in_one_bar() -> None:
    # Entry at the open of bar 1 (100); bar 2 spans 94..106: both 95 and 105 are hit.
    data = bars([100, 100, 100, 100], [100, 101, 106, 100], [100, 99, 94, 100],
                [100, 100, 100, 100], [1, 0, 0, 0])  # fmt: skip
    result = run_backtest(data, Scripted, fee=0.0, stop_loss=0.05, take_profit=0.05)
    (trade,) = result.trades.itertuples()
    assert (trade.exit_reason, trade.exit_bar) == ("stop_loss", 2)
    assert trade.exit_price == pytest.approx(95.0)
    assert trade.pnl == pytest.approx(-500)


def test_gap_through_a_stop_fills_at_the_open() -> None:
    data = bars([100, 100, 90, 90], [100, 101, 92, 90], [100, 99, 88, 90], [100, 100, 90, 90],
                [1, 0, 0, 0])  # fmt: skip
    result = run_backtest(data, Scripted, fee=0.0, slippage=0.01, stop_loss=0.05)
    (trade,) = result.trades.itertuples()
    assert trade.entry_price == pytest.approx(101.0)  # 100 + 1 % slippage
    assert (trade.exit_reason, trade.exit_bar) == ("stop_loss", 2)
    assert trade.exit_price == pytest.approx(90 * 0.99)  # the open, then slippage
    touched = bars([100, 100, 99, 99], [100, 101, 99, 99], [100, 99, 90, 99], [100, 100, 99, 99],
                   [1, 0, 0, 0])  # fmt: skip
    (trade,) = run_backtest(touched, Scripted, fee=0.0, stop_loss=0.05).trades.itertuples()
    assert trade.exit_price == pytest.approx(95.0)  # reached inside the bar: the level itself


def test_take_profit_fills_at_its_level_or_at_a_better_open() -> None:
    data = bars([100, 100, 104, 120], [100, 101, 111, 121], [100, 99, 103, 119],
                [100, 100, 104, 120], [1, 0, 0, 0])  # fmt: skip
    (trade,) = run_backtest(data, Scripted, fee=0.0, take_profit=0.1).trades.itertuples()
    assert (trade.exit_reason, trade.exit_bar) == ("take_profit", 2)
    assert trade.exit_price == pytest.approx(110.0)
    gap = bars([100, 100, 115], [100, 101, 116], [100, 99, 114], [100, 100, 115], [1, 0, 0])
    (trade,) = run_backtest(gap, Scripted, fee=0.0, take_profit=0.1).trades.itertuples()
    assert trade.exit_price == 115.0


def test_stops_are_checked_in_the_entry_bar_with_next_open_fills_only() -> None:
    data = bars([100, 100, 100], [100, 100, 100], [100, 90, 100], [100, 100, 100], [1, 0, 0])
    (trade,) = run_backtest(data, Scripted, fee=0.0, stop_loss=0.05).trades.itertuples()
    assert (trade.entry_bar, trade.exit_bar) == (1, 1)
    assert trade.exit_price == pytest.approx(95.0)
    # With close fills the entry is bar 0's close: bar 1 is the first bar that can stop it.
    data = bars([100, 100, 100], [100, 100, 100], [90, 90, 100], [100, 100, 100], [1, 0, 0])
    (trade,) = run_backtest(
        data, Scripted, fee=0.0, stop_loss=0.05, fill="close"
    ).trades.itertuples()
    assert (trade.entry_bar, trade.exit_bar) == (0, 1)


def test_trailing_stop_follows_the_highest_high_of_earlier_bars() -> None:
    # Entry 100 at bar 1's open. Highs: 110 (bar 1), 120 (bar 2) -> level 108 from bar 3.
    # Bar 3 reaches 130 and dips to 115: its own high does not tighten its own stop (108), so
    # it survives; bar 4's level is 130 * 0.9 = 117, hit by its low of 116.
    data = bars(
        [100, 100, 110, 125, 125],
        [100, 110, 120, 130, 126],
        [100, 99, 109, 115, 116],
        [100, 105, 119, 125, 120],
        [1, 0, 0, 0, 0],
    )
    (trade,) = run_backtest(data, Scripted, fee=0.0, trailing_stop=0.1).trades.itertuples()
    assert (trade.exit_reason, trade.exit_bar) == ("trailing_stop", 4)
    assert trade.exit_price == pytest.approx(117.0)
    # The tighter of stop-loss and trailing stop is the stop: 5 % stop (95) vs trail 90.
    early = bars([100, 100, 100], [100, 100, 100], [100, 100, 94], [100, 100, 100], [1, 0, 0])
    (trade,) = run_backtest(
        early, Scripted, fee=0.0, stop_loss=0.05, trailing_stop=0.1
    ).trades.itertuples()
    assert trade.exit_reason == "stop_loss"
    assert trade.exit_price == pytest.approx(95.0)


def test_short_stops_mirror_the_long_ones() -> None:
    # Short entry at 100 (bar 1's open); lows 90 then 80 -> trail level 88 from bar 3.
    data = bars(
        [100, 100, 92, 85, 85],
        [100, 101, 93, 87, 89],
        [100, 90, 80, 84, 84],
        [100, 92, 85, 85, 88],
        [-1, 0, 0, 0, 0],
    )
    result = run_backtest(data, Scripted, fee=0.0, allow_short=True, trailing_stop=0.1)
    (trade,) = result.trades.itertuples()
    assert (trade.side, trade.exit_reason, trade.exit_bar) == ("short", "trailing_stop", 4)
    assert trade.exit_price == pytest.approx(88.0)
    assert trade.pnl == pytest.approx(100 * 12)
    stopped = run_backtest(data, Scripted, fee=0.0, allow_short=True, stop_loss=0.01)
    (trade,) = stopped.trades.itertuples()
    assert (trade.exit_reason, trade.exit_bar) == ("stop_loss", 1)
    assert trade.exit_price == pytest.approx(101.0)


def test_a_stop_exit_leaves_the_position_flat_for_later_signals() -> None:
    data = bars([100, 100, 95, 96, 97], [100, 100, 96, 97, 98], [100, 90, 94, 95, 96],
                [100, 95, 96, 97, 98], [1, 0, 1, 0, 0])  # fmt: skip
    trades = run_backtest(data, Scripted, fee=0.0, stop_loss=0.05).trades
    assert trades["exit_reason"].tolist() == ["stop_loss", "open"]
    assert trades["entry_bar"].tolist() == [1, 3]


def test_no_entry_without_equity_and_no_trade_on_empty_data() -> None:
    empty = flat_bars([], [])
    result = run_backtest(empty, Scripted)
    assert result.trades.empty and result.equity.empty
    assert result.metrics["total_return"] == 0.0 and result.metrics["n_trades"] == 0
    state = initial_state(0.0)
    out = simulate([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1, 0], state=state)
    assert out.trades.count == 0 and out.position.tolist() == [0, 0]


def test_trades_frame_columns_and_types() -> None:
    result = run_backtest(UP, Scripted)
    assert list(result.trades.columns[:10]) == [
        "entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "fees", "pnl",
        "return", "exit_reason",
    ]  # fmt: skip
    assert str(result.trades["entry_time"].dtype).startswith("datetime64")
    assert str(result.trades["entry_time"].dt.tz) == "UTC"
    assert set(result.trades["exit_reason"]) <= set(EXIT_REASONS)
    assert result.equity.index.equals(UP.index)


def test_engine_options_are_checked() -> None:
    for bad in (
        {"fee": -0.1},
        {"slippage": 1.0},
        {"size": 0.0},
        {"size": 1.5},
        {"fill": "open"},
        {"stop_loss": 0.0},
        {"stop_loss": 1.0},
        {"take_profit": -1},
        {"trailing_stop": math.nan},
        {"cash": 0},
    ):
        with pytest.raises(ValueError):
            run_backtest(UP, Scripted, **bad)
    with pytest.raises(TypeError):
        run_backtest(UP, Scripted, allow_short="yes")
    with pytest.raises(TypeError, match="unknown engine option"):
        EngineOptions.from_kwargs({"leverage": 2})
    with pytest.raises(TypeError, match="not a strategy class"):
        run_backtest(UP, object())


def test_backtest_metrics_equal_run_backtest_metrics() -> None:
    data = random_walk_ohlcv(3_000, seed=5, volatility=4e-3)
    for kwargs in ({}, {"allow_short": True, "stop_loss": 0.01, "fill": "close"}):
        full = run_backtest(data, SMACrossover, {"fast": 5, "slow": 20}, **kwargs)
        only = backtest_metrics(data, SMACrossover, {"fast": 5, "slow": 20}, kwargs)
        assert only.keys() == full.metrics.keys()
        for key, value in only.items():
            assert value == full.metrics[key] or (
                math.isnan(value) and math.isnan(full.metrics[key])
            )
        assert full.metrics["n_trades"] > 20


# ---------------------------------------------------------------------------------------------
# fee_in_base: a long entry's fee taken from the coin bought
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(
    cash=fractions(1.0, 1e9),
    price=fractions(1e-4, 1e6),
    fee=st.one_of(st.just(0.0), fractions(0.0, 0.05)),
    slippage=st.one_of(st.just(0.0), fractions(0.0, 0.02)),
    size=st.one_of(st.just(1.0), fractions(0.01, 1.0)),
    fill=st.sampled_from(["next_open", "close"]),
)
def test_fee_in_base_entry_equals_the_plain_formulas_bit_for_bit(
    cash, price, fee, slippage, size, fill
) -> None:
    """The kernel's entry state is the reference's, exactly (not approximately): paper trading
    repeats these operations and must land on the same bits."""
    options = EngineOptions(cash=cash, fee=fee, slippage=slippage, size=size, fill=fill,
                            fee_in_base=True)  # fmt: skip
    prices = [price, price]  # the buy fills at bar 1's open, or at bar 0's close
    out = simulate(prices, prices, prices, prices, [1, 0], options=options)
    left, units, fill_price, paid, committed = fee_in_base_entry(cash, price, fee, slippage, size)
    state = out.state
    assert state[_S_CASH] == left
    assert state[_S_UNITS] == units
    assert state[_S_ENTRY_PRICE] == fill_price
    assert state[_S_ENTRY_FEE] == paid
    assert state[_S_COMMITTED] == committed
    assert out.equity[-1] == left + units * price
    if fee > 1e-6:  # the same money buys fewer units than with the fee paid in quote
        quote_fee = simulate(prices, prices, prices, prices, [1, 0],
                             options={**options.as_dict(), "fee_in_base": False})  # fmt: skip
        assert state[_S_UNITS] < quote_fee.state[_S_UNITS]


def test_fee_in_base_round_trip_arithmetic_and_pnl_identity() -> None:
    """Bought at 11 (+2 % slippage), 1 % of the coin kept by the exchange; sold at 13 (-2 %) with
    the fee in quote. The trade's P&L is the money out minus the money in."""
    result = run_backtest(UP, Scripted, fee=0.01, slippage=0.02, fee_in_base=True)
    (trade,) = result.trades.itertuples()
    entry = 11 * 1.02
    gross = 10_000 / entry
    units = gross - gross * 0.01
    entry_fee = gross * 0.01 * entry
    exit_ = 13 * 0.98
    exit_fee = units * exit_ * 0.01
    final_cash = 10_000 - gross * entry + units * exit_ - exit_fee
    assert trade.entry_price == entry and trade.exit_price == exit_
    assert trade.size == units
    assert trade.fees == pytest.approx(entry_fee + exit_fee, rel=1e-12)
    assert trade.pnl == pytest.approx(units * (exit_ - entry) - entry_fee - exit_fee, rel=1e-12)
    # Money out minus money in: the cash after the exit less the cash before the entry.
    assert trade.pnl == pytest.approx(final_cash - 10_000, rel=1e-12)
    assert result.equity.iloc[-1] == pytest.approx(final_cash, rel=1e-12)
    assert result.equity.iloc[-1] == pytest.approx(10_000 + trade.pnl, rel=1e-12)
    # The whole committed cash bought coin: nothing (up to rounding) is left in quote.
    assert result.equity.iloc[1] == pytest.approx(units * 11.5, rel=1e-12)
    assert result.trades["return"].iloc[0] == pytest.approx(trade.pnl / 10_000, rel=1e-12)
    assert result.metrics["total_fees"] == pytest.approx(entry_fee + exit_fee, rel=1e-12)
    # Not the quote-fee result: the option changes the arithmetic.
    quote_fee = run_backtest(UP, Scripted, fee=0.01, slippage=0.02)
    assert quote_fee.trades["size"].iloc[0] != trade.size


@PROPERTY
@given(market(), options_strategy.filter(lambda o: o.fee_in_base))
def test_fee_in_base_closed_longs_pnl_is_cash_out_minus_cash_in(case, options) -> None:
    """Every long, with the fee taken from the coin bought, earns its P&L: the cash after its
    exit less the cash before its entry. With next-open fills and every trade closed, the bot is
    flat (equity = cash) at the end of the bar before an entry and of an exit's bar."""
    data, _ = case
    options = EngineOptions(**{**options.as_dict(), "fill": "next_open", "close_at_end": True})
    result = run_backtest(data, Scripted, {}, **options.as_dict())
    equity = result.equity.to_numpy()
    assert (result.position.to_numpy() >= 0).all()
    for trade in result.trades.itertuples():
        assert trade.side == "long" and trade.exit_reason != "open"
        cash_in = equity[trade.entry_bar - 1]  # next_open: never an entry on bar 0
        cash_out = equity[trade.exit_bar]
        assert trade.pnl == pytest.approx(cash_out - cash_in, rel=1e-9, abs=1e-9 * options.cash)


GOLDEN_OPTIONS = [
    {},
    {"fee": 0.0025, "slippage": 0.0007, "size": 0.6, "stop_loss": 0.02, "trailing_stop": 0.03},
    {"fill": "close", "allow_short": True, "take_profit": 0.04, "close_at_end": True},
]
#: sha256 of the simulations of ``golden_digest`` by the engine before ``fee_in_base`` existed.
GOLDEN_DIGEST = "6fd4084598d4577d0badf9ea2b24e1aed97f811b7d88d9467373c5da1beb5e0c"


def golden_digest(extra: dict) -> tuple[str, int]:
    """The digest of every output array of three simulations of fixed data, and their trades.
    Prices are cents from integers (no libm) so the bits are the same on every IEEE machine."""
    rng = np.random.default_rng(2024)
    n = 3_000
    cents = np.maximum(20_000 + np.cumsum(rng.integers(-150, 151, n)), 1_000)
    close = cents / 100.0
    open_ = np.r_[200.0, close[:-1]] + rng.integers(-20, 21, n) / 100.0
    high = np.maximum(open_, close) + rng.integers(0, 200, n) / 100.0
    low = np.minimum(open_, close) - rng.integers(0, 200, n) / 100.0
    signals = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 1], dtype=np.int8), n)
    digest = hashlib.sha256()
    trades = 0
    for options in GOLDEN_OPTIONS:
        out = simulate(open_, high, low, close, signals, options={**options, **extra})
        for array in (out.equity, out.position, *out.trades, out.state):
            digest.update(np.ascontiguousarray(array).tobytes())
        trades += out.trades.count
    return digest.hexdigest(), trades


def test_fee_in_base_off_changes_nothing() -> None:
    """Off (the default, or given as False) the results are the engine's of before the option,
    to the bit."""
    digest, trades = golden_digest({})
    assert trades > 300
    assert digest == GOLDEN_DIGEST
    assert golden_digest({"fee_in_base": False})[0] == GOLDEN_DIGEST
    assert golden_digest({"fee_in_base": np.False_})[0] == GOLDEN_DIGEST
    data = random_walk_ohlcv(2_000, seed=9, volatility=4e-3)
    params = {"fast": 5, "slow": 20}
    default = run_backtest(data, SMACrossover, params)
    off = run_backtest(data, SMACrossover, params, fee_in_base=False)
    assert default.equity.to_numpy().tobytes() == off.equity.to_numpy().tobytes()
    pd.testing.assert_frame_equal(default.trades, off.trades, check_exact=True)
    on = run_backtest(data, SMACrossover, params, fee_in_base=True)
    assert not np.array_equal(on.equity.to_numpy(), default.equity.to_numpy())


def test_fee_in_base_reaches_the_sweep_kernel() -> None:
    """``batch_metrics`` (the sweep's ``fold_batch_nb``) takes the option through
    ``kernel_args``: its rows equal ``run_backtest``'s metrics with the fee in the coin."""
    data = random_walk_ohlcv(3_000, seed=5, volatility=4e-3)
    options = EngineOptions(fee=0.002, slippage=0.0005, stop_loss=0.01, fee_in_base=True)
    prices = tuple(data[c].to_numpy() for c in ("open", "high", "low", "close"))
    rows = []
    expected = []
    for fast, slow in ((5, 20), (8, 30)):
        params = {"fast": fast, "slow": slow}
        rows.append(SMACrossover.generate_signals(data, params))
        expected.append(run_backtest(data, SMACrossover, params, **options.as_dict()).metrics)
    got = batch_metrics(prices, np.stack(rows), options, bars_per_year(data.index))
    quote = batch_metrics(prices, np.stack(rows), EngineOptions(fee=0.002, slippage=0.0005,
                          stop_loss=0.01), bars_per_year(data.index))  # fmt: skip
    for ours, theirs, other in zip(got, expected, quote, strict=True):
        for key, value in theirs.items():
            assert ours[key] == value or (math.isnan(value) and math.isnan(ours[key])), key
        assert ours["final_equity"] != other["final_equity"]


def test_fee_in_base_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^fee_in_base .*allow_short"):
        EngineOptions(fee_in_base=True, allow_short=True)
    with pytest.raises(ValueError, match="fee_in_base"):
        run_backtest(UP, Scripted, fee_in_base=True, allow_short=True)
    with pytest.raises(TypeError, match=r"^fee_in_base must be true or false"):
        EngineOptions(fee_in_base="yes")
    with pytest.raises(TypeError, match="fee_in_base"):
        run_backtest(UP, Scripted, fee_in_base=1)
    with pytest.raises(ValueError, match=r"^fee must be below 1 with fee_in_base"):
        EngineOptions(fee=1.0, fee_in_base=True)
    assert EngineOptions(fee=1.0).fee == 1.0  # the quote fee's rules are unchanged
    options = EngineOptions(fee_in_base=np.True_)
    assert options.fee_in_base is True and options.as_dict()["fee_in_base"] is True
    assert options.kernel_args()[-1] is True
    assert EngineOptions().fee_in_base is False
    assert EngineOptions.from_kwargs({"fee_in_base": True}).fee_in_base is True
