"""Trade simulation: OHLC prices + strategy signals -> fills, trades, equity (pure: numpy, pandas
and numba only, never Django).

``simulate_nb`` is the numba kernel (one pass over plain arrays, with its state in and out so a
simulation can continue across batches of bars); ``simulate`` is its checked wrapper;
``run_backtest`` runs a strategy over an OHLCV frame and returns a ``BacktestResult`` (trades,
equity, metrics).

Strategies are given as a class or as a registered name. Names belong to ``strategies.registry``,
which reads Django settings (for ``TRADEAPP_STRATEGY_MODULES``), so this module never imports
it: a name is looked up in the registry *if the process has loaded it* (every Django process
and every caller of ``backtests.parallel``/``backtests.optimize`` has), and otherwise refused
with a ``TypeError`` that says to pass the class. The engine itself stays free of Django.

Conventions
-----------
Time and signals
    Bar ``i`` is the candle whose **close** time is ``index[i]``. Its signal (``+1`` buy, ``-1``
    sell, ``0`` hold) is known once the candle has closed, so no fill ever happens before the
    close of its signal's bar.

Fill modes (``fill``)
    ``"next_open"`` (default): a signal of bar ``i`` fills at the open of bar ``i + 1``. A signal
    on the last bar is not executed: it stays pending in the simulation state, so a simulation
    continued on the next batch of bars executes it at that batch's first open.
    ``"close"``: a signal of bar ``i`` fills at the close of bar ``i`` (the idealised "trade on
    the close you have just seen"); a signal on the last bar is executed.

Prices and costs
    ``slippage`` moves every fill (entries, exits, stops) against us by that fraction: a buy
    fills at ``p * (1 + slippage)``, a sell at ``p * (1 - slippage)``, where ``p`` is the open,
    close or stop price. ``fee`` is a fraction of the notional charged on every fill:
    ``units * fill_price * fee`` (never negative). ``size`` is the fraction of the current equity
    committed on entry, fee included, in fractional units:
    ``units = equity * size / (fill_price * (1 + fee))``; with ``size=1`` the whole equity goes
    in. Entries only happen flat (a reversal closes first), so that equity is the cash. A long
    entry pays ``units * fill + fee`` from the cash; a short entry adds the sale's proceeds
    ``units * fill - fee`` to the cash and owes ``units`` at the market price. There is no
    entry while the equity is not positive.

    ``fee_in_base`` (off by default; spot only, so not with ``allow_short``): a long entry's fee
    is taken from the coin bought, as Binance does by default, instead of from the quote cash.
    In this float order (``bots.paper.buy`` repeats it operation by operation)::

        committed = cash * size
        fill = price * (1 + slippage)
        gross = committed / fill         # the coin bought
        kept = gross * fee               # the coin the exchange keeps
        units = gross - kept             # the coin held
        paid = kept * fill               # the fee, valued in quote at the fill
        cash = cash - gross * fill       # the quote balance moves by the notional only

    ``entry_price`` is ``fill`` and ``committed`` the return's base, as without the option. An
    exit sells coin for quote, so its fee stays ``units * fill * fee`` in quote. The trade
    identity holds unchanged: since ``units + kept = gross`` (in exact arithmetic),
    ``units * (exit - entry) - paid - exit fee`` is the quote received at the exit minus the
    quote paid at the entry. ``fee`` must then be below 1.

Equity
    ``equity[i] = cash + side * units * close[i]`` after everything that happened in bar ``i``
    (``side`` is +1 long, -1 short, 0 flat). The last value is the final equity.

What a signal does
    ======== ============================================================================
    state    signal
    ======== ============================================================================
    flat     buy: open long. sell: nothing, or open short when ``allow_short``.
    long     buy: ignored (no pyramiding). sell: close the long; with ``allow_short`` then
             open a short at the same fill price (a reversal: two fills, two fees).
    short    sell: ignored. buy: close the short, then open a long at the same fill price
             (with ``allow_short`` a signal is the target direction: +1 long, -1 short).
    ======== ============================================================================

Stops (fractions; ``None`` switches one off)
    Levels are relative to the entry fill price (slippage included). ``stop_loss`` s: a long
    exits at ``entry * (1 - s)``, a short at ``entry * (1 + s)``. ``take_profit`` t: a long at
    ``entry * (1 + t)``, a short at ``entry * (1 - t)``. ``trailing_stop`` r: a long exits at
    ``H * (1 - r)`` with ``H`` the highest high since entry, a short at ``L * (1 + r)`` with
    ``L`` the lowest low since entry. ``H``/``L`` start at the entry fill price and take in a
    bar's high/low only after that bar's stop check: the order of high and low inside a bar is
    unknown, so a bar's own high never tightens its own stop. With both ``stop_loss`` and
    ``trailing_stop`` the tighter level is the stop (``exit_reason`` names it; ``stop_loss`` on
    a tie).

    Stops are checked on every bar the position holds from the bar's open: with ``next_open``
    fills that includes the entry bar (the entry is its open), with ``close`` fills it starts
    with the bar after the entry. A long's stop triggers when ``low <= level``, a short's when
    ``high >= level``; it fills at the level, or at the bar's open when the bar opens beyond it
    (a gap through the stop), then slippage applies. The take-profit likewise (at its level, or
    at the open when the bar opens beyond it). When the stop and the take-profit could both
    trigger in one bar the stop wins: we cannot know which came first, so we assume the worse.
    After a stop exit the position is flat and later signals act normally (with ``close``
    fills the same bar's signal still applies at its close).

Order of events in bar ``i``
    1. ``next_open``: the pending signal of bar ``i - 1`` fills at ``open[i]``.
    2. Stop-loss / trailing stop / take-profit against ``open[i]``, ``high[i]``, ``low[i]``.
    3. The trailing extremes take in ``high[i]`` / ``low[i]``.
    4. ``close``: the signal of bar ``i`` fills at ``close[i]``; ``next_open``: it becomes
       pending.
    5. ``equity[i]`` and ``position[i]`` are recorded.

End of the data
    A position still open after the last bar is valued at the last close and reported as a trade
    with ``exit_reason`` ``"open"``, no ``exit_time`` (NaT), ``exit_price`` the last close (a
    mark, no slippage), ``fees`` the entry fee only and the unrealised ``pnl``. With
    ``close_at_end=True`` (walk-forward windows) it is closed instead at the last close, fee and
    slippage charged, ``exit_reason`` ``"end"``.

Trades
    ``pnl = side * units * (exit_price - entry_price) - fees`` (money, fees of both fills),
    ``return = pnl / committed`` with ``committed = cash * size`` at entry (about
    ``units * entry_price * (1 + fee)``): the profit over the equity committed at entry.
    ``entry_time``/``exit_time`` are the close times of the candles during which the fills
    happened (an open fill happens at the start of its candle, stamped with its close time);
    ``entry_bar``/``exit_bar`` are their positions.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numba import njit

from backtests.metrics import (
    FOLD_BUFFER,
    FOLD_EXPOSED,
    FOLD_LAST,
    FOLD_SIZE,
    bars_per_year,
    compute_metrics,
    fold_bars_nb,
    fold_finish_nb,
    fold_flush_nb,
    fold_load_nb,
    fold_new_nb,
    fold_store_nb,
    metrics_from_stats,
    trade_stats_nb,
)

__all__ = [
    "EXIT_REASONS",
    "FILL_MODES",
    "STATE_SIZE",
    "BacktestResult",
    "EngineOptions",
    "SimulationResult",
    "TradeRecords",
    "backtest_metrics",
    "build_result",
    "initial_state",
    "open_trade",
    "resolve_strategy_class",
    "run_backtest",
    "simulate",
    "simulate_nb",
    "stop_exit",
    "strategy_signals",
    "trades_frame",
]

FILL_MODES: tuple[str, ...] = ("next_open", "close")

#: ``exit_reason`` codes of the kernel's trade records, by position.
EXIT_REASONS: tuple[str, ...] = (
    "open",
    "signal",
    "stop_loss",
    "take_profit",
    "trailing_stop",
    "end",
)
_OPEN, _SIGNAL, _STOP_LOSS, _TAKE_PROFIT, _TRAILING, _END = range(6)
_SIDES = ("long", "short")

# Slots of the simulation state (a float64 vector, so numba passes it as one array).
(
    _S_CASH,  # cash (money)
    _S_SIDE,  # +1 long, -1 short, 0 flat
    _S_UNITS,  # units held (>= 0)
    _S_ENTRY_PRICE,  # entry fill price
    _S_ENTRY_FEE,  # fee paid on entry
    _S_ENTRY_BAR,  # global bar position of the entry
    _S_EXTREME,  # highest high (long) / lowest low (short) since entry, for the trailing stop
    _S_PENDING,  # signal waiting for the next open (next_open fills)
    _S_COMMITTED,  # equity committed at entry (cash * size): the base of the trade's return
) = range(9)
STATE_SIZE = 9
# (side, units, entry_price, entry_fee, entry_bar, extreme, committed) of a flat position.
_FLAT = (0.0, 0.0, 0.0, 0.0, -1, 0.0, 0.0)

# Columns of the kernel's float trade records.
_R_UNITS, _R_ENTRY_PRICE, _R_EXIT_PRICE, _R_FEES, _R_PNL, _R_RETURN = range(6)
_R_FLOATS = 6


class TradeRecords(NamedTuple):
    """Closed trades as arrays, one element per trade, in exit order.

    ``entry_bar``/``exit_bar`` int64 global bar positions, ``side`` int8 (+1/-1), ``units``,
    ``entry_price``, ``exit_price``, ``fees``, ``pnl``, ``ret`` float64, ``reason`` int8 (an index
    into ``EXIT_REASONS``).
    """

    entry_bar: np.ndarray
    exit_bar: np.ndarray
    side: np.ndarray
    units: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    fees: np.ndarray
    pnl: np.ndarray
    ret: np.ndarray
    reason: np.ndarray

    @classmethod
    def empty(cls) -> TradeRecords:
        ints = np.empty(0, dtype=np.int64)
        small = np.empty(0, dtype=np.int8)
        floats = np.empty(0, dtype=np.float64)
        return cls(ints, ints, small, floats, floats, floats, floats, floats, floats, small)

    @classmethod
    def concat(cls, parts: list[TradeRecords]) -> TradeRecords:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    @property
    def count(self) -> int:
        """Number of trades (``len()`` is the tuple's: its number of fields)."""
        return int(self.entry_bar.shape[0])


class SimulationResult(NamedTuple):
    """What ``simulate`` returns: per-bar ``equity`` (float64) and ``position`` (int8 side after
    the bar), the closed ``trades`` and the ``state`` to continue from (``STATE_SIZE`` float64)."""

    equity: np.ndarray
    position: np.ndarray
    trades: TradeRecords
    state: np.ndarray


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------


# The hot loop keeps the whole state in scalar locals. Helpers that run on every bar take and
# return scalars only (LLVM inlines them); those that touch the record arrays run only when a
# trade closes or a signal arrives, since passing arrays to a numba call costs reference counting.


@njit(cache=True)
def _entry_nb(  # noqa: PLR0917 - numba kernels take positional scalars
    side: int,
    price: float,
    cash: float,
    fee: float,
    slippage: float,
    size: float,
    fee_in_base: bool,
) -> tuple[float, float, float, float, float]:
    """Open ``side`` at market ``price`` from flat: ``(cash, units, fill, fee paid, committed)``;
    ``units`` 0 (nothing opened) when the equity is not positive. ``fee_in_base``: a long's fee
    is taken from the coin bought (module docstring, "Prices and costs", whose float order this
    is and ``bots.paper.buy``'s too: change all three together)."""
    committed = cash * size
    if not committed > 0.0:
        return cash, 0.0, 0.0, 0.0, 0.0
    fill = price * (1.0 + slippage) if side > 0 else price * (1.0 - slippage)
    if fee_in_base and side > 0:
        gross = committed / fill
        kept = gross * fee
        return cash - gross * fill, gross - kept, fill, kept * fill, committed
    units = committed / (fill * (1.0 + fee))
    notional = units * fill
    paid = notional * fee
    if side > 0:
        return cash - notional - paid, units, fill, paid, committed
    return cash + notional - paid, units, fill, paid, committed


@njit(cache=True)
def _exit_nb(  # noqa: PLR0917
    side: float, units: float, price: float, cash: float, fee: float, slippage: float
) -> tuple[float, float, float]:
    """Close ``units`` of ``side`` at market ``price``: ``(cash, fill, fee paid)``."""
    if side > 0:
        fill = price * (1.0 - slippage)
        notional = units * fill
        paid = notional * fee
        return cash + notional - paid, fill, paid
    fill = price * (1.0 + slippage)
    notional = units * fill
    paid = notional * fee
    return cash - notional - paid, fill, paid


@njit(cache=True)
def _record_nb(  # noqa: PLR0917
    rec_i: np.ndarray,
    rec_s: np.ndarray,
    rec_f: np.ndarray,
    k: int,
    exit_bar: int,
    reason: int,
    held: tuple[float, float, float, float, int, float],
    exit_price: float,
    exit_fee: float,
) -> int:
    """Write closed trade ``k`` of the position ``held`` (``side, units, entry_price,
    entry_fee, entry_bar, committed``); return ``k + 1``. A plain call, not inlined: numba's
    own inlining of a function with array arguments adds atomic reference counting."""
    side, units, entry_price, entry_fee, entry_bar, committed = held
    fees = entry_fee + exit_fee
    pnl = side * units * (exit_price - entry_price) - fees
    rec_i[k, 0] = entry_bar
    rec_i[k, 1] = exit_bar
    rec_s[k, 0] = np.int8(side)
    rec_s[k, 1] = reason
    rec_f[k, _R_UNITS] = units
    rec_f[k, _R_ENTRY_PRICE] = entry_price
    rec_f[k, _R_EXIT_PRICE] = exit_price
    rec_f[k, _R_FEES] = fees
    rec_f[k, _R_PNL] = pnl
    rec_f[k, _R_RETURN] = pnl / committed
    return k + 1


@njit(cache=True)
def _stop_check_nb(  # noqa: PLR0911, PLR0912, PLR0917 - one exit per case reads best
    side: float,
    entry: float,
    extreme: float,
    open_: float,
    high: float,
    low: float,
    stop_loss: float,
    take_profit: float,
    trailing_stop: float,
) -> tuple[int, float]:
    """``(exit reason, market price)`` of the stop or take-profit that triggers in this bar, or
    ``(_OPEN, nan)`` when none does (module docstring: the stop first, at its level or at a gapped
    open). Levels that are off are NaN: every comparison with NaN is false."""
    stop = math.nan
    stop_reason = _STOP_LOSS
    if side > 0:
        if not math.isnan(stop_loss):
            stop = entry * (1.0 - stop_loss)
        if not math.isnan(trailing_stop):
            trail = extreme * (1.0 - trailing_stop)
            if not stop >= trail:  # the higher level is the tighter; also when stop is NaN
                stop = trail
                stop_reason = _TRAILING
        target = entry * (1.0 + take_profit)
        if open_ <= stop:
            return stop_reason, open_
        if low <= stop:
            return stop_reason, stop
        if open_ >= target:
            return _TAKE_PROFIT, open_
        if high >= target:
            return _TAKE_PROFIT, target
        return _OPEN, math.nan
    if not math.isnan(stop_loss):
        stop = entry * (1.0 + stop_loss)
    if not math.isnan(trailing_stop):
        trail = extreme * (1.0 + trailing_stop)
        if not stop <= trail:
            stop = trail
            stop_reason = _TRAILING
    target = entry * (1.0 - take_profit)
    if open_ >= stop:
        return stop_reason, open_
    if high >= stop:
        return stop_reason, stop
    if open_ <= target:
        return _TAKE_PROFIT, open_
    if low <= target:
        return _TAKE_PROFIT, target
    return _OPEN, math.nan


def stop_exit(  # noqa: PLR0917 - the position then the bar's prices, as the kernel takes them
    side: float,
    entry: float,
    extreme: float,
    open_: float,
    high: float,
    low: float,
    *,
    stop_loss: float | None,
    take_profit: float | None,
    trailing_stop: float | None,
) -> tuple[str, float] | None:
    """The simulation's stop rule for one bar, for callers outside a simulation (the bots'
    paper and live brokers): ``(exit reason, market price)`` of the stop or take-profit that
    triggers, or None. ``side`` +1 long / -1 short, ``extreme`` the trailing extreme so far;
    levels are fractions, None for off. The stop first, at its level or at a gapped open."""
    reason, price = _stop_check_nb(
        float(side), float(entry), float(extreme), float(open_), float(high), float(low),
        math.nan if stop_loss is None else float(stop_loss),
        math.nan if take_profit is None else float(take_profit),
        math.nan if trailing_stop is None else float(trailing_stop),
    )  # fmt: skip
    return None if reason == _OPEN else (EXIT_REASONS[reason], float(price))


@njit(cache=True, inline="always")
def _act_nb(  # noqa: PLR0917
    order: int,
    price: float,
    bar: int,
    cash: float,
    side: float,
    units: float,
    entry_price: float,
    entry_fee: float,
    entry_bar: int,
    extreme: float,
    committed: float,
    fee: float,
    slippage: float,
    size: float,
    allow_short: bool,
    fee_in_base: bool,
) -> tuple[float, float, float, float, float, int, float, float, bool, float, float]:
    """Act on a non-zero signal ``order`` at market ``price`` (the table in the module
    docstring); returns the new ``(cash, side, units, entry_price, entry_fee, entry_bar,
    extreme, committed)``, then ``(closed, fill, paid)``: whether the position held before was
    closed, at what fill and fee (the caller records that trade from the position it passed).
    No arrays in or out: inlined into the kernel's loop, an array argument costs atomic
    reference counting on every call."""
    closed = False
    fill = 0.0
    paid = 0.0
    if order == side:
        return (cash, side, units, entry_price, entry_fee, entry_bar, extreme, committed,
                closed, fill, paid)  # fmt: skip
    if side != 0.0:  # on the other side: close that first
        cash, fill, paid = _exit_nb(side, units, price, cash, fee, slippage)
        closed = True
        side, units, entry_price, entry_fee, entry_bar, extreme, committed = _FLAT
    if order > 0 or allow_short:
        cash, opened, entry_fill, entry_paid, base = _entry_nb(
            order, price, cash, fee, slippage, size, fee_in_base
        )
        if opened > 0.0:
            side, units, entry_price, entry_fee = float(order), opened, entry_fill, entry_paid
            entry_bar, extreme, committed = bar, entry_fill, base
    return (cash, side, units, entry_price, entry_fee, entry_bar, extreme, committed, closed,
            fill, paid)  # fmt: skip


@njit(cache=True, inline="always")
def _hold_nb(  # noqa: PLR0917
    equity: np.ndarray,
    position: np.ndarray,
    close: np.ndarray,
    a: int,
    b: int,
    cash: float,
    exposure: float,
    side: float,
) -> None:
    """Equity and position of bars ``a .. b - 1`` where nothing happens: ``cash + side * units
    * close`` (``exposure = side * units``, the same arithmetic as a bar simulated one by one).
    Indices, not slices: a slice per call costs more than a short run."""
    held = np.int8(side)
    for j in range(a, b):
        equity[j] = cash + exposure * close[j]
        position[j] = held


@njit(cache=True)
def _events_nb(signals: np.ndarray) -> np.ndarray:
    """The positions of the non-zero ``signals``, then ``len(signals)`` (a sentinel). Eight
    signals are tested at once and the positions inside a word that holds one are written
    branch-free, so sparse signals cost little (the array is as long as the bars, but only the
    pages written are ever touched)."""
    n = signals.shape[0]
    out = np.empty(n + 1, dtype=np.int64)
    whole = n - n % 8
    words = signals[:whole].view(np.uint64)
    k = 0
    for w in range(words.shape[0]):
        if words[w] != 0:
            for b in range(w * 8, w * 8 + 8):
                out[k] = b
                k += signals[b] != 0
    for i in range(whole, n):
        out[k] = i
        k += signals[i] != 0
    out[k] = n
    return out[: k + 1]


# The kernel takes plain positional scalars: numba's nopython mode has no keyword-only arguments.
@njit(cache=True, nogil=True)  # a sweep runs it in threads
def simulate_nb(  # noqa: PLR0912, PLR0915, PLR0917
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    signals: np.ndarray,
    state: np.ndarray,
    offset: int,
    fee: float,
    slippage: float,
    size: float,
    fill_at_close: bool,
    allow_short: bool,
    stop_loss: float,
    take_profit: float,
    trailing_stop: float,
    close_at_end: bool,
    fee_in_base: bool,
    equity: np.ndarray,
    position: np.ndarray,
    fold: np.ndarray,
    fold_buffer: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate trading ``signals`` on one batch of bars, continuing from ``state``.

    Inputs: ``open_``, ``high``, ``low``, ``close`` float64 and ``signals`` int8 (-1, 0, +1) of
    one length; ``state`` float64 of ``STATE_SIZE`` (``initial_state``; not modified);
    ``offset`` the global position of the batch's first bar (trade records carry global bar
    positions); ``fee``, ``slippage``, ``size`` fractions; ``stop_loss``, ``take_profit``,
    ``trailing_stop`` fractions or NaN for none; ``fee_in_base`` a long entry's fee taken from
    the coin bought (a branch of the entry only). The conventions are the module docstring's.
    No input is validated here (``simulate`` does it). ``equity`` (float64) and ``position``
    (int8), one per bar, receive the outputs: allocated by numpy (which reuses memory) rather
    than here (fresh pages, ~1.5 ms per 8 MB).

    ``fold_buffer``: empty, or ``FOLD_BUFFER`` float64 of scratch: then every bar's equity is
    fed to the equity fold ``fold`` (``backtests.metrics.fold_new_nb``, updated in place)
    instead of being written to ``equity`` and ``position`` (pass empty arrays): what a sweep
    needs of a combination, without a curve. ``fold`` is not used otherwise (any array of
    ``FOLD_SIZE``).

    Returns ``(equity float64[n], position int8[n], rec_i int64[k, 2] (entry_bar, exit_bar),
    rec_s int8[k, 2] (side, reason), rec_f float64[k, 6] (units, entry_price, exit_price, fees,
    pnl, return), state_out)`` with one record per trade closed in this batch.
    """
    n = close.shape[0]
    # The bars with a signal. Every trade needs an entry, every entry a signal: these, plus the
    # pending one and the position carried in from the previous batch, bound the records.
    events = _events_nb(signals)
    cap = events.shape[0] + 1  # events ends with a sentinel
    rec_i = np.empty((cap, 2), dtype=np.int64)
    rec_s = np.empty((cap, 2), dtype=np.int8)
    rec_f = np.empty((cap, _R_FLOATS), dtype=np.float64)
    has_stops = not (math.isnan(stop_loss) and math.isnan(take_profit))
    has_stops = has_stops or not math.isnan(trailing_stop)
    folding = fold_buffer.shape[0] > 0
    lanes = fold[:12]
    (f_count, f_shift, f_found, f_last, f_next, f_peak, f_peak_bar, f_depth, f_best, f_trough,
     f_screen, f_level, f_recovery, f_len, f_odd, f_exposed) = fold_load_nb(fold)  # fmt: skip
    initial = state[_S_CASH]

    cash = state[_S_CASH]
    side = state[_S_SIDE]
    units = state[_S_UNITS]
    entry_price = state[_S_ENTRY_PRICE]
    entry_fee = state[_S_ENTRY_FEE]
    entry_bar = np.int64(state[_S_ENTRY_BAR])
    extreme = state[_S_EXTREME]
    committed = state[_S_COMMITTED]
    pending = np.int64(state[_S_PENDING])
    k = 0
    # Each step acts on bar i, then the bars up to the next one that can act (a signal, a fill
    # pending, a stop to check while a position is open, the last bar with close_at_end) change
    # nothing but the equity: they are written (or folded) with bar i in one vectorised run.
    last = n - 1 if close_at_end else n  # the last bar closes the position: a step of its own
    e = 0
    i = 0
    while i < n:
        bar = offset + i
        # 1. next_open: the signal of the previous bar fills at this open.
        if pending != 0:
            held = (side, units, entry_price, entry_fee, entry_bar, committed)
            (cash, side, units, entry_price, entry_fee, entry_bar, extreme, committed, closed,
             fill, paid) = _act_nb(
                pending, open_[i], bar, cash, side, units, entry_price, entry_fee, entry_bar,
                extreme, committed, fee, slippage, size, allow_short, fee_in_base,
            )  # fmt: skip
            if closed:
                k = _record_nb(rec_i, rec_s, rec_f, k, bar, _SIGNAL, held, fill, paid)
            pending = 0
        # 2. Stops inside the bar; 3. the trailing extreme takes in the bar.
        if has_stops and side != 0.0:
            reason, price = _stop_check_nb(
                side, entry_price, extreme, open_[i], high[i], low[i], stop_loss, take_profit,
                trailing_stop,
            )  # fmt: skip
            if reason != _OPEN:
                cash, fill, paid = _exit_nb(side, units, price, cash, fee, slippage)
                held = (side, units, entry_price, entry_fee, entry_bar, committed)
                k = _record_nb(rec_i, rec_s, rec_f, k, bar, reason, held, fill, paid)
                side, units, entry_price, entry_fee, entry_bar, extreme, committed = _FLAT
            elif side > 0.0:
                extreme = max(extreme, high[i])
            else:
                extreme = min(extreme, low[i])
        # 4. This bar's signal: filled at its close, or pending for the next open.
        signal = np.int64(signals[i])
        if signal != 0:
            if fill_at_close:
                held = (side, units, entry_price, entry_fee, entry_bar, committed)
                (cash, side, units, entry_price, entry_fee, entry_bar, extreme, committed,
                 closed, fill, paid) = _act_nb(
                    signal, close[i], bar, cash, side, units, entry_price, entry_fee,
                    entry_bar, extreme, committed, fee, slippage, size, allow_short,
                    fee_in_base,
                )  # fmt: skip
                if closed:
                    k = _record_nb(rec_i, rec_s, rec_f, k, bar, _SIGNAL, held, fill, paid)
            else:
                pending = signal
        if close_at_end and i == n - 1 and side != 0.0:
            cash, fill, paid = _exit_nb(side, units, close[i], cash, fee, slippage)
            held = (side, units, entry_price, entry_fee, entry_bar, committed)
            k = _record_nb(rec_i, rec_s, rec_f, k, bar, _END, held, fill, paid)
            side, units, entry_price, entry_fee, entry_bar, extreme, committed = _FLAT
        # The next bar that can act.
        while events[e] <= i:
            e += 1
        j = i + 1
        carried = 0
        if pending == 0 and not (has_stops and side != 0.0):
            nxt = events[e]
            if not fill_at_close and nxt < last:
                # A next_open signal changes nothing in its own bar (step 4 only makes it
                # pending): that bar holds like the others, and the next step is its fill.
                j = nxt + 1
                carried = np.int64(signals[nxt])
            else:
                j = max(min(nxt, last), j)
        # 5. Equity and position after bars i .. j - 1.
        if not folding:
            _hold_nb(equity, position, close, i, j, cash, side * units, side)
            pending = carried if carried != 0 else pending
            i = j
            continue
        # The equity fold (backtests.metrics): bars i .. j - 1 hold cash and exposure.
        exposure = side * units
        if i == 0:  # bar 0's return: the moments' shift when it is finite
            first = (cash + exposure * close[0]) / initial - 1.0
            if math.isfinite(first):
                f_shift, f_found = first, True
            f_last = initial
        # Flat (cash only, and the shift 0): the bars after the first one equal to the equity
        # before them have returns of exactly 0, exact zeros in the sums: only counted.
        end = j
        if exposure == 0.0 and cash > 0.0 and f_found and f_shift == 0.0:
            if cash == f_last:
                f_count += j - i
                pending = carried if carried != 0 else pending
                i = j
                continue
            end = i + 1
        if i != f_next:  # after a skipped run: pad to bar i's lane with exact zeros
            if f_len + 3 >= fold_buffer.shape[0]:
                f_shift, f_found = fold_flush_nb(fold_buffer, f_len, f_shift, f_found, f_odd, lanes)
                f_len = 0
                f_odd = False
            plain = f_found and f_shift == 0.0
            pad = (i - f_len) & 3  # both are non-negative: i % 4 == (f_len + pad) % 4
            fold_buffer[f_len : f_len + pad] = 0.0 if plain else np.nan
            f_len += pad
            f_odd = f_odd or not plain
        t = i
        while t < end:
            if f_len == fold_buffer.shape[0]:  # a multiple of 4: bar t is in lane 0
                f_shift, f_found = fold_flush_nb(fold_buffer, f_len, f_shift, f_found, f_odd, lanes)
                f_len = 0
                f_odd = False
            stop = min(end, t + fold_buffer.shape[0] - f_len)
            (f_len, finite, f_last, f_peak, f_peak_bar, f_depth, f_best, f_trough, f_screen,
             f_level, f_recovery) = fold_bars_nb(
                fold_buffer, close, t, stop, f_len, cash, exposure, f_last, f_peak, f_peak_bar,
                f_depth, f_best, f_trough, f_screen, f_level, f_recovery,
            )  # fmt: skip
            f_count += finite
            f_odd = f_odd or finite < stop - t
            t = stop
        if exposure != 0.0:
            f_exposed += j - i
        f_count += j - end
        f_next = end
        pending = carried if carried != 0 else pending
        i = j
    if folding:
        fold_store_nb(
            fold,
            (f_count, f_shift, f_found, f_last, f_next, f_peak, f_peak_bar, f_depth, f_best,
             f_trough, f_screen, f_level, f_recovery, f_len, f_odd, f_exposed),
        )  # fmt: skip

    state_out = np.empty(STATE_SIZE, dtype=np.float64)
    state_out[_S_CASH] = cash
    state_out[_S_SIDE] = side
    state_out[_S_UNITS] = units
    state_out[_S_ENTRY_PRICE] = entry_price
    state_out[_S_ENTRY_FEE] = entry_fee
    state_out[_S_ENTRY_BAR] = entry_bar
    state_out[_S_EXTREME] = extreme
    state_out[_S_PENDING] = pending
    state_out[_S_COMMITTED] = committed
    return equity, position, rec_i[:k].copy(), rec_s[:k].copy(), rec_f[:k].copy(), state_out


# ---------------------------------------------------------------------------------------------
# Options and the array wrapper
# ---------------------------------------------------------------------------------------------


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class EngineOptions:
    """The engine's settings, checked once (``EngineOptions(**engine_kwargs)``).

    ``cash`` > 0 (money); ``fee`` >= 0 and ``slippage`` in [0, 1) (fractions per fill); ``size``
    in (0, 1] (fraction of equity per entry, fee included: no leverage); ``fill`` one of
    ``FILL_MODES``; ``stop_loss`` in (0, 1), ``take_profit`` > 0 and ``trailing_stop`` in (0, 1)
    or ``None``; ``close_at_end`` closes a position still open after the last bar;
    ``fee_in_base`` takes a long entry's fee from the coin bought instead of the quote cash
    (Binance's default for a spot buy; module docstring, "Prices and costs"): a spot rule, so
    not with ``allow_short``, and ``fee`` must be below 1 (the exchange cannot keep the whole
    coin). Off by default: the results without it are unchanged. Raises
    ``ValueError``/``TypeError`` naming the setting.
    """

    cash: float = 10_000.0
    fee: float = 0.001
    slippage: float = 0.0
    size: float = 1.0
    fill: str = "next_open"
    allow_short: bool = False
    stop_loss: float | None = None
    take_profit: float | None = None
    trailing_stop: float | None = None
    close_at_end: bool = False
    fee_in_base: bool = False

    def __post_init__(self) -> None:
        cash = _number("cash", self.cash)
        fee = _number("fee", self.fee)
        slippage = _number("slippage", self.slippage)
        size = _number("size", self.size)
        if not cash > 0:
            raise ValueError(f"cash must be positive, got {self.cash!r}")
        if not fee >= 0:
            raise ValueError(f"fee must be >= 0, got {self.fee!r}")
        if not 0 <= slippage < 1:
            raise ValueError(f"slippage must be in [0, 1), got {self.slippage!r}")
        if not 0 < size <= 1:
            raise ValueError(f"size must be in (0, 1] (no leverage), got {self.size!r}")
        if self.fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {', '.join(FILL_MODES)}, got {self.fill!r}")
        for name, upper in (("stop_loss", 1.0), ("take_profit", None), ("trailing_stop", 1.0)):
            value = getattr(self, name)
            if value is None:
                continue
            number = _number(name, value)
            if not number > 0 or (upper is not None and not number < upper):
                bounds = f"(0, {upper:g})" if upper is not None else "> 0"
                raise ValueError(f"{name} must be {bounds} or None, got {value!r}")
            object.__setattr__(self, name, number)
        for name in ("allow_short", "close_at_end", "fee_in_base"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.fee_in_base and self.allow_short:
            raise ValueError(
                "fee_in_base cannot be combined with allow_short: a fee taken from the coin "
                "bought is a spot rule, and spot has no shorts"
            )
        if self.fee_in_base and not fee < 1:
            raise ValueError(
                f"fee must be below 1 with fee_in_base (a fraction of the coin bought), "
                f"got {self.fee!r}"
            )
        object.__setattr__(self, "cash", cash)
        object.__setattr__(self, "fee", fee)
        object.__setattr__(self, "slippage", slippage)
        object.__setattr__(self, "size", size)

    @classmethod
    def from_kwargs(cls, options: EngineOptions | Mapping[str, Any] | None) -> EngineOptions:
        """``options`` as ``EngineOptions`` (a mapping of keyword arguments, or None: defaults);
        an unknown name raises ``TypeError`` listing the known ones."""
        if isinstance(options, EngineOptions):
            return options
        options = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown engine option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**options)

    def as_dict(self) -> dict[str, Any]:
        """JSON-native settings (stops as numbers or None)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def kernel_args(self) -> tuple:
        """The scalar tail of ``simulate_nb``'s arguments, from ``fee`` on."""

        def level(value: float | None) -> float:
            return math.nan if value is None else float(value)

        return (
            self.fee,
            self.slippage,
            self.size,
            self.fill == "close",
            self.allow_short,
            level(self.stop_loss),
            level(self.take_profit),
            level(self.trailing_stop),
            self.close_at_end,
            self.fee_in_base,
        )


def initial_state(cash: float) -> np.ndarray:
    """A fresh simulation state: ``cash`` money, flat, nothing pending."""
    state = np.zeros(STATE_SIZE, dtype=np.float64)
    state[_S_CASH] = float(cash)
    state[_S_ENTRY_BAR] = -1.0
    return state


def _price_array(name: str, values: object, n: int | None) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} values, expected {n}")
    return array


def _signal_array(signals: object, n: int) -> np.ndarray:
    array = np.asarray(signals)
    if array.shape != (n,):
        raise ValueError(f"signals must have one value per bar ({n},), got shape {array.shape}")
    if array.dtype != np.int8:
        if not np.isin(array, (-1, 0, 1)).all():
            raise ValueError("signals must be -1, 0 or 1")
        array = array.astype(np.int8)
    return np.ascontiguousarray(array)


# simulate_nb's fold arguments when it writes the equity instead.
_NO_FOLD = np.zeros(FOLD_SIZE)
_NO_FOLD_BUFFER = np.empty(0)


def simulate(
    open_: object,
    high: object,
    low: object,
    close: object,
    signals: object,
    *,
    options: EngineOptions | Mapping[str, Any] | None = None,
    state: np.ndarray | None = None,
    offset: int = 0,
) -> SimulationResult:
    """Simulate trading ``signals`` over OHLC arrays (the module docstring's conventions).

    ``open_``/``high``/``low``/``close``: one-dimensional float64-convertible arrays of one
    length; ``signals``: -1/0/+1 per bar (int8 preferred: no conversion). ``options``: an
    ``EngineOptions`` or a mapping of its keyword arguments. ``state``: where a previous call
    left off (``SimulationResult.state``), or None to start flat with ``options.cash``; the
    ``cash`` option is then ignored. ``offset``: global position of the first bar, added to the
    bar positions in the trade records. Feeding a series in consecutive batches, each with the
    previous batch's state and its offset, gives exactly the single call's equity and trades.
    Prices are not checked for NaN (``validate_ohlcv`` does that for frames).
    """
    opts = EngineOptions.from_kwargs(options)
    close = _price_array("close", close, None)
    n = close.shape[0]
    arrays = [_price_array(name, values, n) for name, values in (("open", open_), ("high", high))]
    arrays.append(_price_array("low", low, n))
    sig = _signal_array(signals, n)
    if state is None:
        state = initial_state(opts.cash)
    else:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_SIZE,):
            raise ValueError(f"state must have shape ({STATE_SIZE},), got {state.shape}")
    equity, position, rec_i, rec_s, rec_f, state_out = simulate_nb(
        arrays[0], arrays[1], arrays[2], close, sig, state, int(offset), *opts.kernel_args(),
        np.empty(n, dtype=np.float64), np.empty(n, dtype=np.int8), _NO_FOLD, _NO_FOLD_BUFFER,
    )  # fmt: skip
    trades = TradeRecords(
        entry_bar=rec_i[:, 0].copy(),
        exit_bar=rec_i[:, 1].copy(),
        side=rec_s[:, 0].copy(),
        units=rec_f[:, _R_UNITS].copy(),
        entry_price=rec_f[:, _R_ENTRY_PRICE].copy(),
        exit_price=rec_f[:, _R_EXIT_PRICE].copy(),
        fees=rec_f[:, _R_FEES].copy(),
        pnl=rec_f[:, _R_PNL].copy(),
        ret=rec_f[:, _R_RETURN].copy(),
        reason=rec_s[:, 1].copy(),
    )
    return SimulationResult(equity, position, trades, state_out)


def open_trade(state: np.ndarray, last_close: float) -> dict[str, Any] | None:
    """The position still open in ``state``, valued at ``last_close``, as a trade dict
    (``exit_bar`` -1, ``exit_reason`` ``"open"``, fees the entry fee); None when flat."""
    side = int(state[_S_SIDE])
    if side == 0:
        return None
    units = float(state[_S_UNITS])
    entry = float(state[_S_ENTRY_PRICE])
    fees = float(state[_S_ENTRY_FEE])
    pnl = side * units * (last_close - entry) - fees
    return {
        "entry_bar": int(state[_S_ENTRY_BAR]),
        "exit_bar": -1,
        "side": side,
        "units": units,
        "entry_price": entry,
        "exit_price": float(last_close),
        "fees": fees,
        "pnl": pnl,
        "ret": pnl / float(state[_S_COMMITTED]),
        "reason": _OPEN,
    }


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

TRADE_COLUMNS: tuple[str, ...] = (
    "entry_time",
    "exit_time",
    "side",
    "size",
    "entry_price",
    "exit_price",
    "fees",
    "pnl",
    "return",
    "exit_reason",
    "entry_bar",
    "exit_bar",
)


def trades_frame(
    records: TradeRecords, index: pd.DatetimeIndex, open_position: Mapping[str, Any] | None
) -> pd.DataFrame:
    """Trade records (plus the open position, last) as the ``BacktestResult.trades`` frame.

    Columns ``TRADE_COLUMNS``: times from ``index`` at the fill bars (NaT exit for the open
    position), ``side`` "long"/"short" and ``exit_reason`` (one of ``EXIT_REASONS``) as
    categoricals, ``size`` in units, ``entry_bar``/``exit_bar`` positions (-1 exit for the open
    position).
    """
    columns = {name: getattr(records, name) for name in TradeRecords._fields}
    if open_position is not None:
        columns = {
            name: np.append(values, np.asarray(open_position[name], dtype=values.dtype))
            for name, values in columns.items()
        }
    entry_bar = columns["entry_bar"]
    exit_bar = columns["exit_bar"]
    index = pd.DatetimeIndex(index)
    entry_time = index[entry_bar]
    exit_time = index[np.maximum(exit_bar, 0)].where(exit_bar >= 0)
    return pd.DataFrame(
        {
            "entry_time": entry_time,
            "exit_time": exit_time,
            "side": pd.Categorical.from_codes((columns["side"] < 0).astype(np.int8), _SIDES),
            "size": columns["units"],
            "entry_price": columns["entry_price"],
            "exit_price": columns["exit_price"],
            "fees": columns["fees"],
            "pnl": columns["pnl"],
            "return": columns["ret"],
            "exit_reason": pd.Categorical.from_codes(columns["reason"], EXIT_REASONS),
            "entry_bar": entry_bar,
            "exit_bar": exit_bar,
        },
        columns=list(TRADE_COLUMNS),
    )


@dataclass
class BacktestResult:
    """One backtest: ``trades`` (``TRADE_COLUMNS``; the open position last, ``exit_reason``
    "open"), ``equity`` (Series per bar on the data's index; the last value is the final
    equity), ``metrics`` (``backtests.metrics.compute_metrics``), plus the per-bar ``position``
    (+1/0/-1 after each bar) and ``signals``, the cleaned ``parameters``, the strategy name and
    the engine ``options``."""

    trades: pd.DataFrame
    equity: pd.Series
    metrics: dict[str, float]
    position: pd.Series
    signals: pd.Series
    parameters: dict[str, Any] = field(default_factory=dict)
    strategy: str = ""
    options: EngineOptions = field(default_factory=EngineOptions)


def build_result(
    index: pd.DatetimeIndex,
    close: np.ndarray,
    signals: np.ndarray,
    simulation: SimulationResult,
    options: EngineOptions,
    *,
    strategy: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> BacktestResult:
    """Assemble a ``BacktestResult`` from a whole-series simulation (one call, or batches joined:
    equity and position concatenated, trade records concatenated, the last batch's state)."""
    n = len(index)
    still_open = open_trade(simulation.state, float(close[-1])) if n else None
    trades = trades_frame(simulation.trades, index, still_open)
    pnl = simulation.trades.pnl
    # The same sum as backtest_metrics: closed trades, then the open position's entry fee.
    open_fee = still_open["fees"] if still_open is not None else 0.0
    total_fees = float(trade_fees_nb(simulation.trades.fees, float(open_fee)))
    metrics = compute_metrics(
        simulation.equity,
        options.cash,
        pnl,
        simulation.position,
        bars_per_year(index),
        open_trades=0 if still_open is None else 1,
        total_fees=total_fees,
    )
    # The arrays are the kernel's own: wrapping them without a copy is safe (pandas 3 copies by
    # default), and on a million bars the copies would cost more than the simulation.
    return BacktestResult(
        trades=trades,
        equity=pd.Series(simulation.equity, index=index, name="equity", copy=False),
        metrics=metrics,
        position=pd.Series(simulation.position, index=index, name="position", copy=False),
        signals=pd.Series(signals, index=index, name="signal", copy=False),
        parameters=dict(parameters or {}),
        strategy=strategy,
        options=options,
    )


def _strategy_label(strategy: object) -> str:
    return str(getattr(strategy, "name", "") or getattr(strategy, "__name__", ""))


def resolve_strategy_class(strategy: Any) -> Any:
    """The strategy class of ``strategy``: a class is returned as is, a name is looked up in
    ``strategies.registry`` when that module is loaded (see the module docstring)."""
    if isinstance(strategy, str):
        registry = sys.modules.get("strategies.registry")
        if registry is None:
            raise TypeError(
                f"strategy name {strategy!r} given but strategies.registry is not loaded in this "
                "process (the engine does not import it: it reads Django settings); pass the "
                "class, e.g. strategies.builtin.BUILTIN_STRATEGIES[name] or "
                "strategies.registry.get_strategy(name)"
            )
        return registry.get_strategy(strategy)
    if not hasattr(strategy, "generate_signals") or not hasattr(strategy, "clean_parameters"):
        raise TypeError(f"{strategy!r} is not a strategy class (no generate_signals)")
    return strategy


def strategy_signals(strategy: Any, frame: pd.DataFrame, parameters: Mapping | None) -> tuple:
    """``(cleaned parameters, int8 signals)`` of a strategy on ``frame``.

    ``strategy`` is a ``strategies.base.BaseStrategy`` subclass (or anything with its
    ``clean_parameters`` and ``generate_signals`` classmethods), or a name
    (``resolve_strategy_class``).
    """
    strategy = resolve_strategy_class(strategy)
    params = strategy.clean_parameters(parameters)
    signals = np.asarray(strategy.generate_signals(frame, params))
    if signals.dtype != np.int8:
        signals = signals.astype(np.int8)
    return params, signals


def run_backtest(
    data: pd.DataFrame,
    strategy: Any,
    parameters: Mapping[str, Any] | None = None,
    *,
    cash: float = 10_000.0,
    fee: float = 0.001,
    slippage: float = 0.0,
    size: float = 1.0,
    fill: str = "next_open",
    allow_short: bool = False,
    stop_loss: float | None = None,
    take_profit: float | None = None,
    trailing_stop: float | None = None,
    close_at_end: bool = False,
    fee_in_base: bool = False,
) -> BacktestResult:
    """Backtest ``strategy`` with ``parameters`` on the OHLCV frame ``data`` in one pass.

    ``data``: lowercase ``open high low close volume`` columns on a UTC ``DatetimeIndex`` of
    candle close times (``strategies.base.validate_ohlcv`` rules; the strategy validates it).
    ``strategy``: a strategy class or a registered name (module docstring: names need
    ``strategies.registry`` loaded). ``parameters`` are cleaned by the strategy
    (``StrategyParameterError`` when invalid). The engine settings and every convention are in
    the module docstring; bad settings raise ``ValueError``/``TypeError``.
    """
    options = EngineOptions(
        cash=cash,
        fee=fee,
        slippage=slippage,
        size=size,
        fill=fill,
        allow_short=allow_short,
        stop_loss=stop_loss,
        take_profit=take_profit,
        trailing_stop=trailing_stop,
        close_at_end=close_at_end,
        fee_in_base=fee_in_base,
    )
    strategy = resolve_strategy_class(strategy)
    params, signals = strategy_signals(strategy, data, parameters)
    frame = data
    simulation = simulate(
        frame["open"].to_numpy(dtype=np.float64),
        frame["high"].to_numpy(dtype=np.float64),
        frame["low"].to_numpy(dtype=np.float64),
        frame["close"].to_numpy(dtype=np.float64),
        signals,
        options=options,
    )
    return build_result(
        frame.index,
        frame["close"].to_numpy(dtype=np.float64),
        signals,
        simulation,
        options,
        strategy=_strategy_label(strategy),
        parameters=params,
    )


def backtest_metrics(
    frame: pd.DataFrame,
    strategy: Any,
    parameters: Mapping[str, Any] | None,
    options: EngineOptions | Mapping[str, Any] | None = None,
    *,
    periods_per_year: float | None = None,
) -> dict[str, float]:
    """The ``metrics`` of ``run_backtest(frame, strategy, parameters, **options)``, and nothing
    else: no trades frame, no series (what a parameter sweep keeps per combination).

    ``periods_per_year`` saves inferring the bars per year from the index again (pass
    ``bars_per_year(frame.index)``).
    """
    opts = EngineOptions.from_kwargs(options)
    _, signals = strategy_signals(strategy, frame, parameters)
    prices = tuple(frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close"))
    periods = bars_per_year(frame.index) if periods_per_year is None else periods_per_year
    return signals_metrics(prices, signals, opts, periods)


def signals_metrics(
    prices: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    signals: np.ndarray,
    options: EngineOptions,
    periods_per_year: float,
) -> dict[str, float]:
    """The metrics of simulating ``signals`` over ``prices`` (open, high, low, close arrays):
    ``backtest_metrics`` once the signals are known, equal bit for bit to ``compute_metrics`` of
    ``simulate``'s result. A sweep extracts the prices once and calls this per combination:
    the simulation feeds an equity fold (``backtests.metrics``) instead of writing a curve per
    bar, so nothing per bar is kept or allocated."""
    close = _price_array("close", prices[3], None)
    n = close.shape[0]
    open_, high, low = (
        _price_array(name, values, n)
        for name, values in zip(("open", "high", "low"), prices[:3], strict=True)
    )
    return folded_metrics(
        (open_, high, low, close), _signal_array(signals, n), options, periods_per_year
    )


def folded_metrics(
    prices: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    signals: np.ndarray,
    options: EngineOptions,
    periods_per_year: float,
) -> dict[str, float]:
    """``signals_metrics`` without its checks: ``prices`` contiguous float64 arrays of one
    length and ``signals`` int8 of that length."""
    return batch_metrics(prices, signals.reshape(1, -1), options, periods_per_year)[0]


def batch_metrics(
    prices: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    signals: np.ndarray,
    options: EngineOptions,
    periods_per_year: float,
) -> list[dict[str, float]]:
    """The metrics of each row of ``signals`` (int8, one row per parameter set, one column per
    bar of the contiguous float64 ``prices``): what a sweep keeps per combination. One call of
    ``fold_batch_nb`` simulates every row without the GIL; Python only names the numbers."""
    rows = fold_batch_nb(*prices, signals, options.cash, *options.kernel_args())
    n = prices[3].shape[0]
    initial = options.cash
    return [
        metrics_from_stats(
            (int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7])),
            n=n,
            final=float(r[8]),
            initial=initial,
            trades=(int(r[10]), int(r[11]), float(r[12]), float(r[13]), float(r[14])),
            exposed=float(r[9]) / n if n else 0.0,
            bars_per_year=periods_per_year,
            open_trades=int(r[16]),
            total_fees=float(r[15]),
        )
        for r in rows.tolist()
    ]


_BATCH_WIDTH = 17  # fold_batch_nb's numbers per row


@njit(cache=True, nogil=True)
def fold_batch_nb(  # noqa: PLR0917 - numba kernels take positional scalars
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    signals: np.ndarray,
    cash: float,
    fee: float,
    slippage: float,
    size: float,
    fill_at_close: bool,
    allow_short: bool,
    stop_loss: float,
    take_profit: float,
    trailing_stop: float,
    close_at_end: bool,
    fee_in_base: bool,
) -> np.ndarray:
    """Simulate each row of ``signals`` (int8, rows x bars) from ``cash``, the equity folded
    (``simulate_nb`` with a fold); one row of numbers each: the fold's ``(count, mean,
    squares, downside, depth, peak, trough, recovery)``, the final equity, the bars with a
    position, the closed trades' ``(count, wins, gross profit, gross loss, total pnl)``
    (``trade_stats_nb``), the fees (closed trades in order, then the open position's entry
    fee: ``trade_fees_nb``) and 1 when a position is still open."""
    m = signals.shape[0]
    n = close.shape[0]
    out = np.empty((m, _BATCH_WIDTH))
    state = np.zeros(STATE_SIZE)
    state[_S_CASH] = cash
    state[_S_ENTRY_BAR] = -1.0
    buffer = np.empty(FOLD_BUFFER)
    no_equity = np.empty(0)
    no_position = np.empty(0, dtype=np.int8)
    for row in range(m):
        fold = fold_new_nb(cash)
        _, _, _, _, rec_f, end = simulate_nb(
            open_, high, low, close, signals[row], state, 0, fee, slippage, size,
            fill_at_close, allow_short, stop_loss, take_profit, trailing_stop, close_at_end,
            fee_in_base, no_equity, no_position, fold, buffer,
        )  # fmt: skip
        count, mean, squares, downside, depth, peak, trough, recovery = fold_finish_nb(fold, buffer)
        still_open = end[_S_SIDE] != 0.0 and n > 0
        wins, gains, losses, total = trade_stats_nb(rec_f[:, _R_PNL])
        values = out[row]
        values[0], values[1], values[2], values[3] = count, mean, squares, downside
        values[4], values[5], values[6], values[7] = depth, peak, trough, recovery
        values[8] = fold[FOLD_LAST] if n else cash
        values[9] = fold[FOLD_EXPOSED]
        values[10], values[11], values[12] = rec_f.shape[0], wins, gains
        values[13], values[14] = losses, total
        values[15] = trade_fees_nb(rec_f[:, _R_FEES], end[_S_ENTRY_FEE] if still_open else 0.0)
        values[16] = 1.0 if still_open else 0.0
    return out


@njit(cache=True)
def trade_fees_nb(fees: np.ndarray, open_fee: float) -> float:
    """The fees of the closed trades added in order, then ``open_fee`` (the open position's
    entry fee): ``total_fees`` for a backtest and a sweep's row alike."""
    total = 0.0
    for value in fees:
        total += value
    return total + open_fee
