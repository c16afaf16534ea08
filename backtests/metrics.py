"""Performance metrics of a backtest (pure: numpy, pandas and numba only, never Django).

One small documented function per metric, in the manner of freqtrade's ``data/metrics.py``: each
takes plain arrays and states its formula and its edge cases. ``compute_metrics`` gathers them
into the dict a ``BacktestResult`` (and every row of a parameter sweep) carries; ``json_safe``
turns that dict (or anything holding it) into JSON-native values.

Notation: ``E0`` the starting cash, ``E[i]`` the equity after bar ``i`` (``i = 0 .. n-1``),
``r[i] = E[i] / E[i-1] - 1`` the bar returns with ``E[-1] = E0``, ``B`` the bars per year,
``pnl[j]`` the profit of closed trade ``j`` in money (fees deducted).

Edge cases, once for all
------------------------
- No bars: total return 0, the ratios 0, drawdown 0, exposure 0.
- No closed trade: ``n_trades`` 0; ``win_rate``, ``profit_factor`` and ``expectancy`` NaN (they
  are undefined, not zero).
- Zero standard deviation (Sharpe) or zero downside deviation (Sortino): 0.0 when the mean
  return is 0 as well (a flat equity: nothing traded or nothing moved), else ``+inf``/``-inf``
  (a riskless gain or loss). Fewer than two returns: Sharpe 0.0.
- Unknown bars per year (fewer than two bars, so no spacing): the annualised figures (CAGR,
  Sharpe, Sortino) are NaN.
- A bar return whose previous equity is not positive (a short that lost everything) is
  undefined: it is left out of the means and deviations.
- ``json_safe`` maps NaN and infinities to ``None`` (JSON has no such numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

__all__ = [
    "FOLD_BUFFER",
    "FOLD_EXPOSED",
    "FOLD_FIELDS",
    "FOLD_LAST",
    "FOLD_SIZE",
    "METRIC_NAMES",
    "SECONDS_PER_YEAR",
    "bar_returns",
    "bars_per_year",
    "cagr",
    "compute_metrics",
    "drawdown_nb",
    "equity_moments_nb",
    "equity_stats_nb",
    "expectancy",
    "exposure",
    "fold_bars_nb",
    "fold_finish_nb",
    "fold_flush_nb",
    "fold_load_nb",
    "fold_new_nb",
    "fold_store_nb",
    "json_safe",
    "max_drawdown",
    "metrics_from_stats",
    "profit_factor",
    "sharpe_ratio",
    "sortino_ratio",
    "total_return",
    "trade_stats_nb",
    "win_rate",
]

#: Crypto markets trade around the clock, every day: a year is 365 days of bars.
SECONDS_PER_YEAR = 365 * 86_400

#: Keys of ``compute_metrics``, in order.
METRIC_NAMES: tuple[str, ...] = (
    "total_return",
    "cagr",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration",
    "win_rate",
    "profit_factor",
    "expectancy",
    "exposure",
    "n_trades",
    "open_trades",
    "final_equity",
    "total_fees",
    "bars_per_year",
)


@njit(cache=True)
def _median_spacing_nb(times: np.ndarray) -> float:
    """Median of the positive-length steps of ``times`` (int64); the common case of one constant
    step is settled in a single pass without sorting."""
    step = times[1] - times[0]
    for i in range(2, times.shape[0]):
        if times[i] - times[i - 1] != step:
            return float(np.median(np.diff(times)))
    return float(step)


def bars_per_year(index: pd.DatetimeIndex | np.ndarray) -> float:
    """Bars per year from the spacing of the candle times: ``SECONDS_PER_YEAR / median(dt)``.

    ``index``: a ``DatetimeIndex`` (or datetime64 array). The median spacing ignores the odd gap
    (a missing candle). NaN with fewer than two bars or a non-positive spacing.
    """
    times = pd.DatetimeIndex(index)
    if len(times) < 2:
        return math.nan
    unit_seconds = pd.Timedelta(1, unit=times.unit).total_seconds()
    spacing = _median_spacing_nb(np.ascontiguousarray(times.asi8)) * unit_seconds
    return SECONDS_PER_YEAR / spacing if spacing > 0 else math.nan


def bar_returns(equity: np.ndarray, initial: float) -> np.ndarray:
    """Simple bar returns ``r[i] = E[i] / E[i-1] - 1`` with ``E[-1] = E0``.

    NaN where the previous equity is not positive (undefined).
    """
    equity = np.asarray(equity, dtype=np.float64)
    previous = np.empty_like(equity)
    if equity.size:
        previous[0] = initial
        previous[1:] = equity[:-1]
    out = np.full_like(equity, np.nan)
    np.divide(equity, previous, out=out, where=previous > 0)
    out -= 1.0
    return out


def total_return(equity: np.ndarray, initial: float) -> float:
    """``E[n-1] / E0 - 1`` (0 without bars)."""
    if len(equity) == 0:
        return 0.0
    return float(equity[-1]) / initial - 1.0


def cagr(equity: np.ndarray, initial: float, bars_per_year: float) -> float:
    """Compound annual growth rate ``(E[n-1] / E0) ** (B / n) - 1``.

    The span is ``n / B`` years (n bars). -1 when the final equity is not positive (all lost);
    0 without bars; NaN when ``B`` is unknown; ``+inf`` when a gain over a short span compounds
    past the float range (about 1e308).
    """
    n = len(equity)
    return _cagr(float(equity[-1]) if n else float(initial), n, initial, bars_per_year)


def _cagr(final: float, n: int, initial: float, bars_per_year: float) -> float:
    if n == 0:
        return 0.0
    if not math.isfinite(bars_per_year) or bars_per_year <= 0:
        return math.nan
    growth = final / initial
    if growth <= 0:
        return -1.0
    exponent = math.log(growth) * bars_per_year / n
    # A gain over a short span, compounded over a year, can pass the float range.
    return math.exp(exponent) - 1.0 if exponent < 709.0 else math.inf


def _ratio(mean: float, deviation: float) -> float:
    if deviation > 0:
        return mean / deviation
    if mean == 0:
        return 0.0
    return math.copysign(math.inf, mean)


@njit(cache=True)
def _finish_nb(count: int, shift: float, acc: np.ndarray) -> tuple[int, float, float, float]:
    """``(count, mean, squared deviations, downside)`` from ``_moments_into_nb``'s sums."""
    if count == 0:
        return 0, 0.0, 0.0, 0.0
    s1 = (acc[0] + acc[1]) + (acc[2] + acc[3])
    s2 = (acc[4] + acc[5]) + (acc[6] + acc[7])
    deviations = max(s2 - s1 * s1 / count, 0.0)
    return count, shift + s1 / count, deviations, (acc[8] + acc[9]) + (acc[10] + acc[11])


# One pass with sums shifted by the first valid value (the shifted-data variance: no
# cancellation as long as the shift is a typical value, and exactly 0 for constant data) and
# four partial sums, value ``i`` going to sum ``i % 4``, added in a fixed order. The loop is
# unrolled by four and branch-free (a value left out adds an exact 0.0), so the four lanes run
# side by side. ``_moments_nb`` and ``equity_moments_nb`` both go through
# ``_moments_into_nb``, so their results are equal bit for bit.
@njit(cache=True)
def _lane_nb(v: float, shift: float) -> tuple[float, float, float, int]:
    """One value's contributions ``(d, d * d, downside, counted)``: exact zeros for a NaN."""
    ok = math.isfinite(v)
    w = v if ok else 0.0
    d = w - shift if ok else 0.0
    # min(w, 0) without a branch (a return's sign is unpredictable): w - |w| is exactly 2w or 0.
    below = 0.5 * (w - abs(w))
    return d, d * d, below * below, np.int64(ok)


@njit(cache=True)
def _moments_into_nb(values: np.ndarray, first: int, shift: float, acc: np.ndarray) -> int:
    """Fold ``values`` (positions ``first``, ``first + 1``, ..., ``first`` a multiple of 4) into
    the sums ``acc`` (float64[12]: four lanes each of d, d * d and downside); returns how many
    values were finite."""
    n = values.shape[0]
    s0, s1, s2, s3 = acc[0], acc[1], acc[2], acc[3]
    q0, q1, q2, q3 = acc[4], acc[5], acc[6], acc[7]
    n0, n1, n2, n3 = acc[8], acc[9], acc[10], acc[11]
    count = 0
    whole = n - n % 4
    for i in range(0, whole, 4):
        d, dd, dn, c0 = _lane_nb(values[i], shift)
        s0 += d
        q0 += dd
        n0 += dn
        d, dd, dn, c1 = _lane_nb(values[i + 1], shift)
        s1 += d
        q1 += dd
        n1 += dn
        d, dd, dn, c2 = _lane_nb(values[i + 2], shift)
        s2 += d
        q2 += dd
        n2 += dn
        d, dd, dn, c3 = _lane_nb(values[i + 3], shift)
        s3 += d
        q3 += dd
        n3 += dn
        count += c0 + c1 + c2 + c3
    for i in range(whole, n):  # the last 0-3 values: lanes 0, 1, 2
        d, dd, dn, c = _lane_nb(values[i], shift)
        if (first + i) % 4 == 0:
            s0 += d
            q0 += dd
            n0 += dn
        elif (first + i) % 4 == 1:
            s1 += d
            q1 += dd
            n1 += dn
        else:
            s2 += d
            q2 += dd
            n2 += dn
        count += c
    acc[0], acc[1], acc[2], acc[3] = s0, s1, s2, s3
    acc[4], acc[5], acc[6], acc[7] = q0, q1, q2, q3
    acc[8], acc[9], acc[10], acc[11] = n0, n1, n2, n3
    return count


@njit(cache=True)
def _first_finite_nb(values: np.ndarray, shift: float, found: bool) -> tuple[float, bool]:
    """``(the first finite value, True)``, or ``(shift, found)`` unchanged when there is none:
    the moments' shift (the first finite return)."""
    for v in values:
        if math.isfinite(v):
            return v, True
    return shift, found


@njit(cache=True)
def _moments_nb(values: np.ndarray) -> tuple[int, float, float, float]:
    """``(count, mean, sum of squared deviations from the mean, sum of squared negative
    values)`` of the finite ``values``."""
    shift, _ = _first_finite_nb(values, 0.0, False)
    acc = np.zeros(12)
    count = _moments_into_nb(values, 0, shift, acc)
    return _finish_nb(count, shift, acc)


@njit(cache=True, error_model="numpy")  # x / 0 gives inf (left out), not an exception
def _returns_into_nb(equity: np.ndarray, start: int, stop: int, initial: float, out: np.ndarray):
    """``bar_returns(equity, initial)[start:stop]`` into ``out``: NaN where the previous equity
    is not positive. Branch-free, so it vectorises."""
    k = 0
    if start == 0 and stop > 0:
        out[0] = equity[0] / initial - 1.0 if initial > 0 else np.nan
        k = 1
    now = equity[start + k : stop]
    before = equity[start + k - 1 : stop - 1]
    rest = out[k : stop - start]
    for i in range(now.shape[0]):
        p = before[i]
        r = now[i] / p - 1.0
        rest[i] = r if p > 0 else np.nan


_RETURNS_BLOCK = 4096


@njit(cache=True)
def equity_moments_nb(equity: np.ndarray, initial: float) -> tuple[int, float, float, float]:
    """``_moments_nb(bar_returns(equity, initial))``, equal bit for bit, without a returns array
    (what a sweep computes per combination): the returns go through a small buffer, 4,096 bars
    at a time, that stays in the CPU cache."""
    n = equity.shape[0]
    buffer = np.empty(min(n, _RETURNS_BLOCK))
    shift = 0.0
    found = False
    acc = np.zeros(12)
    count = 0
    for start in range(0, n, _RETURNS_BLOCK):
        stop = min(start + _RETURNS_BLOCK, n)
        block = buffer[: stop - start]
        _returns_into_nb(equity, start, stop, initial, block)
        if not found:
            shift, found = _first_finite_nb(block, shift, found)
        count += _moments_into_nb(block, start, shift, acc)
    return _finish_nb(count, shift, acc)


def _sharpe(count: int, mean: float, squares: float, bars_per_year: float) -> float:
    if count < 2:
        return 0.0
    if not math.isfinite(bars_per_year):
        return math.nan
    ratio = _ratio(mean, math.sqrt(squares / (count - 1)))
    return ratio * math.sqrt(bars_per_year) if math.isfinite(ratio) else ratio


def _sortino(count: int, mean: float, downside: float, bars_per_year: float) -> float:
    if count == 0:
        return 0.0
    if not math.isfinite(bars_per_year):
        return math.nan
    ratio = _ratio(mean, math.sqrt(downside / count))
    return ratio * math.sqrt(bars_per_year) if math.isfinite(ratio) else ratio


def sharpe_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    """Annualised Sharpe ratio ``mean(r) / std(r) * sqrt(B)`` (risk-free rate 0).

    ``std`` with ``ddof=1``; NaN returns are left out. 0.0 with fewer than two returns; zero
    deviation and NaN ``B`` as in the module docstring.
    """
    count, mean, squares, _ = _moments_nb(np.ascontiguousarray(returns, dtype=np.float64))
    return _sharpe(count, mean, squares, bars_per_year)


def sortino_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    """Annualised Sortino ratio ``mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(B)`` (target 0).

    The downside deviation is over all bars (the gains count as 0), as in Sortino's definition;
    NaN returns are left out. 0.0 without returns; zero downside and NaN ``B`` as in the module
    docstring.
    """
    count, mean, _, downside = _moments_nb(np.ascontiguousarray(returns, dtype=np.float64))
    return _sortino(count, mean, downside, bars_per_year)


@njit(cache=True)
def _drawdown_step_nb(
    i: int, value: float, peak: tuple[float, int], deepest: tuple[float, int, int, float]
) -> tuple[tuple[float, int], tuple[float, int, int, float]]:
    """Fold bar ``i`` into the running peak ``(value, bar)`` and the deepest drawdown so far
    ``(depth, peak bar, trough bar, screen)``; ``screen`` is a price a little above
    ``peak * (1 - depth)``: only a bar below it can be deeper, so the division runs rarely."""
    peak_value, peak_bar = peak
    depth, best_peak, trough, screen = deepest
    if value > peak_value:
        peak_value, peak_bar = value, i
        screen = peak_value * (1.0 - depth) * (1.0 + 1e-9)
    elif value < screen and peak_value > 0:
        dd = 1.0 - value / peak_value
        if dd > depth:
            depth, best_peak, trough = dd, peak_bar, i
            screen = peak_value * (1.0 - depth) * (1.0 + 1e-9)
    return (peak_value, peak_bar), (depth, best_peak, trough, screen)


@njit(cache=True)
def _recovery_nb(equity: np.ndarray, initial: float, peak_bar: int, trough: int) -> int:
    """First bar after ``trough`` back at or above the peak's value (-1 if none)."""
    if trough < 0:
        return -1
    level = initial if peak_bar < 0 else equity[peak_bar]
    for i in range(trough + 1, equity.shape[0]):
        if equity[i] >= level:
            return i
    return -1


@njit(cache=True)
def drawdown_nb(equity: np.ndarray, initial: float) -> tuple[float, int, int, int]:
    """Deepest drawdown of ``equity`` (float64) from its running peak, the start being ``initial``.

    Returns ``(depth, peak, trough, recovery)``: ``depth = max_i (1 - E[i] / max(E0, E[..i]))``
    as a fraction (0 when the equity never falls), the bar of the peak before the deepest trough
    (-1 for the starting cash), the trough's bar, and the first bar after it back at or above
    that peak (-1 if never). The first of equal depths counts.
    """
    peak = (initial, -1)
    deepest = (0.0, -1, -1, initial * (1.0 + 1e-9))
    for i in range(equity.shape[0]):
        peak, deepest = _drawdown_step_nb(i, equity[i], peak, deepest)
    depth, peak_bar, trough, _ = deepest
    return depth, peak_bar, trough, _recovery_nb(equity, initial, peak_bar, trough)


@njit(cache=True, nogil=True)  # a sweep runs it in threads
def equity_stats_nb(
    equity: np.ndarray, initial: float
) -> tuple[int, float, float, float, float, int, int, int]:
    """``equity_moments_nb`` and ``drawdown_nb`` of one equity curve, with results equal to
    theirs bit for bit: ``(count, mean, squares, downside, depth, peak, trough, recovery)``."""
    count, mean, deviations, below = equity_moments_nb(equity, initial)
    depth, peak_bar, trough, recovery = drawdown_nb(equity, initial)
    return count, mean, deviations, below, depth, peak_bar, trough, recovery


# ---------------------------------------------------------------------------------------------
# The equity fold: the statistics of an equity curve fed in runs of bars, without the curve. A
# parameter sweep simulates each combination this way (``simulate_nb`` with a fold), and the
# results equal ``equity_stats_nb``'s of the curve bit for bit.
#
# Every bar of a run (``fold_bars_nb``) takes its drawdown step at once (the recovery of the
# deepest drawdown followed online) and writes its return into a buffer of ``FOLD_BUFFER``
# values, at a position in the same lane (``i % 4``) as its bar; a full buffer goes through
# ``_moments_into_nb`` (``fold_flush_nb``; ``_plain_moments_into_nb`` when every value is finite
# and the shift 0, the same sums without the NaN handling), so the sums are
# ``equity_moments_nb``'s. A run of bars whose equity equals the last bar's (flat: cash only) is
# only counted: its returns are exactly 0 (the equity before is positive), which add exact zeros
# to every sum as long as the moments' shift is 0 (bar 0's return, known once bar 0 is fed;
# otherwise the run is fed bar by bar like any other), and a repeated value never moves the
# peak, the drawdown or the recovery. The next run's first return then lands in its own lane
# after padding that adds exact zeros.
#
# The running state is a tuple of scalars that the simulation keeps in registers
# (``FOLD_FIELDS``, in order); ``fold_new_nb``, ``fold_load_nb`` and ``fold_store_nb`` keep it in
# a float64 array between calls, and ``fold_finish_nb`` gives the statistics.
# ---------------------------------------------------------------------------------------------

FOLD_BUFFER = 4096
#: Fields of the fold state tuple, in order.
FOLD_FIELDS: tuple[str, ...] = (
    "count",  # finite returns so far
    "shift",  # the moments' shift: the first finite return
    "found",  # 1 once the shift is known
    "last",  # equity of the last bar fed (the initial cash before any)
    "next_bar",  # the bar expected next (a later one: a flat run was skipped)
    "peak",  # running peak value
    "peak_bar",  # its bar (-1: the initial cash)
    "depth",  # deepest drawdown so far (fraction)
    "best_peak",  # the peak bar before it
    "trough",  # its trough bar (-1: none)
    "screen",  # ``_drawdown_step_nb``'s screen
    "level",  # the equity that recovers the deepest drawdown
    "recovery",  # first bar after the trough back at the level (-1: not yet)
    "length",  # returns in the buffer
    "odd",  # 1 when the buffer holds a non-finite return or NaN padding
    "exposed",  # bars fed with a position
)
FOLD_SIZE = 12 + len(FOLD_FIELDS)  # the twelve moment sums, then the fields
FOLD_LAST = 12 + FOLD_FIELDS.index("last")  # where a fold array holds the final equity
FOLD_EXPOSED = 12 + FOLD_FIELDS.index("exposed")  # and the bars with a position


@njit(cache=True)
def fold_new_nb(initial: float) -> np.ndarray:
    """A fresh fold (as an array) of an equity curve that starts from ``initial`` cash."""
    fold = np.zeros(FOLD_SIZE)
    state = fold[12:]
    state[3] = initial  # last
    state[5] = initial  # peak
    state[6] = -1.0  # peak_bar
    state[8] = -1.0  # best_peak
    state[9] = -1.0  # trough
    state[10] = initial * (1.0 + 1e-9)  # screen
    state[12] = -1.0  # recovery
    return fold


@njit(cache=True, inline="always")
def fold_load_nb(fold: np.ndarray) -> tuple:
    """The state tuple of a fold array."""
    s = fold[12:]
    return (
        np.int64(s[0]), s[1], s[2] != 0.0, s[3], np.int64(s[4]), s[5], np.int64(s[6]), s[7],
        np.int64(s[8]), np.int64(s[9]), s[10], s[11], np.int64(s[12]), np.int64(s[13]),
        s[14] != 0.0, np.int64(s[15]),
    )  # fmt: skip


@njit(cache=True, inline="always")
def fold_store_nb(fold: np.ndarray, state: tuple) -> None:
    """Write the state tuple back into the fold array."""
    s = fold[12:]
    (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13],
     s[14], s[15]) = state  # fmt: skip


@njit(cache=True)
def fold_flush_nb(  # noqa: PLR0917 - numba: positional arguments
    buffer: np.ndarray, length: int, shift: float, found: bool, odd: bool, lanes: np.ndarray
) -> tuple[float, bool]:
    """Fold ``buffer[:length]`` (position ``i`` in lane ``i % 4``) into the moment sums
    ``lanes``; the shift is the first finite value when it was not known. Returns ``(shift,
    found)``."""
    block = buffer[:length]
    if not found:
        shift, found = _first_finite_nb(block, shift, found)
    if not odd and shift == 0.0:  # finite returns, padding 0.0: the plain sums
        _plain_moments_into_nb(block, lanes)
    else:
        _moments_into_nb(block, 0, shift, lanes)
    return shift, found


@njit(cache=True)
def _plain_moments_into_nb(values: np.ndarray, acc: np.ndarray) -> None:
    """``_moments_into_nb(values, 0, 0.0, acc)`` for finite ``values``, without its NaN
    handling (half its time): with the shift 0, ``d`` is the value and ``min(v, 0) ** 2``
    equals ``_lane_nb``'s downside term bit for bit."""
    n = values.shape[0]
    s0, s1, s2, s3 = acc[0], acc[1], acc[2], acc[3]
    q0, q1, q2, q3 = acc[4], acc[5], acc[6], acc[7]
    n0, n1, n2, n3 = acc[8], acc[9], acc[10], acc[11]
    whole = n - n % 4
    for i in range(0, whole, 4):
        v0, v1, v2, v3 = values[i], values[i + 1], values[i + 2], values[i + 3]
        s0 += v0
        s1 += v1
        s2 += v2
        s3 += v3
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
        b0, b1, b2, b3 = min(v0, 0.0), min(v1, 0.0), min(v2, 0.0), min(v3, 0.0)
        n0 += b0 * b0
        n1 += b1 * b1
        n2 += b2 * b2
        n3 += b3 * b3
    for i in range(whole, n):  # the last 0-3 values: lanes 0, 1, 2
        v = values[i]
        b = min(v, 0.0)
        if i % 4 == 0:
            s0, q0, n0 = s0 + v, q0 + v * v, n0 + b * b
        elif i % 4 == 1:
            s1, q1, n1 = s1 + v, q1 + v * v, n1 + b * b
        else:
            s2, q2, n2 = s2 + v, q2 + v * v, n2 + b * b
    acc[0], acc[1], acc[2], acc[3] = s0, s1, s2, s3
    acc[4], acc[5], acc[6], acc[7] = q0, q1, q2, q3
    acc[8], acc[9], acc[10], acc[11] = n0, n1, n2, n3


@njit(cache=True, error_model="numpy")
def fold_bars_nb(  # noqa: PLR0917 - numba: one loop, positional scalars
    buffer: np.ndarray,
    close: np.ndarray,
    a: int,
    b: int,
    length: int,
    cash: float,
    exposure: float,
    last: float,
    peak: float,
    peak_bar: int,
    depth: float,
    best_peak: int,
    trough: int,
    screen: float,
    level: float,
    recovery: int,
) -> tuple[int, int, float, float, int, float, int, int, float, float, int]:
    """Feed bars ``a .. b - 1`` whose equity is ``cash + exposure * close`` (``buffer`` has room
    for them after ``length``): their returns into the buffer, their drawdown steps. Returns
    ``(length, finite returns, last, peak, peak_bar, depth, best_peak, trough, screen, level,
    recovery)``. A function of its own, with scalars in and out: inside the simulation's loop
    this loop ran three times slower."""
    finite = 0
    for i in range(a, b):
        value = cash + exposure * close[i]
        r = value / last - 1.0 if last > 0.0 else np.nan
        buffer[length] = r
        length += 1
        finite += math.isfinite(r)
        last = value
        # The drawdown step, with the recovery of the deepest drawdown followed.
        before = trough
        (peak, peak_bar), (depth, best_peak, trough, screen) = _drawdown_step_nb(
            i, value, (peak, peak_bar), (depth, best_peak, trough, screen)
        )
        if trough != before:  # a new deepest drawdown: its recovery is the peak's level
            level, recovery = peak, -1
        elif recovery < 0 and trough >= 0 and value >= level:
            recovery = i
    return (length, finite, last, peak, peak_bar, depth, best_peak, trough, screen, level,
            recovery)  # fmt: skip


@njit(cache=True)
def fold_finish_nb(
    fold: np.ndarray, buffer: np.ndarray
) -> tuple[int, float, float, float, float, int, int, int]:
    """Fold what is buffered; ``(count, mean, squares, downside, depth, peak, trough,
    recovery)`` as ``equity_stats_nb`` gives them."""
    s = fold[12:]
    lanes = fold[:12]
    shift, found = s[1], s[2] != 0.0
    length = np.int64(s[13])
    if length:
        shift, found = fold_flush_nb(buffer, length, shift, found, s[14] != 0.0, lanes)
    count, mean, squares, downside = _finish_nb(np.int64(s[0]), shift, lanes)
    return (count, mean, squares, downside, s[7], np.int64(s[8]), np.int64(s[9]),
            np.int64(s[12]))  # fmt: skip


def max_drawdown(equity: np.ndarray, initial: float) -> tuple[float, int]:
    """``(depth, duration)`` of the deepest drawdown.

    ``depth = max_i (1 - E[i] / max(E0, E[0..i]))``, a positive fraction (0.25 = 25 % below the
    peak; 0 when the equity never falls). ``duration`` in bars: from the peak before the deepest
    trough (bar -1 being the starting cash) to the first bar back at or above that peak, or to
    the last bar when it never recovers; 0 without a drawdown.
    """
    equity = np.ascontiguousarray(equity, dtype=np.float64)
    depth, peak, trough, recovery = drawdown_nb(equity, float(initial))
    return float(depth), _duration(equity.shape[0], peak, trough, recovery)


def _duration(n: int, peak: int, trough: int, recovery: int) -> int:
    if trough < 0:
        return 0
    end = recovery if recovery >= 0 else n - 1
    return int(end - peak)


@njit(cache=True)
def trade_stats_nb(pnl: np.ndarray) -> tuple[int, float, float, float]:
    """``(wins, gross profit, gross loss, total)`` of the closed trades' ``pnl``, each sum
    added in trade order (one pass, the same numbers for a backtest and a sweep's row)."""
    wins = 0
    gains = 0.0
    losses = 0.0
    total = 0.0
    for value in pnl:
        total += value
        if value > 0:
            wins += 1
            gains += value
        elif value < 0:
            losses -= value
    return wins, gains, losses, total


def _trade_metrics(pnl: np.ndarray) -> tuple[float, float, float]:
    """``(win_rate, profit_factor, expectancy)`` of the closed trades (the functions below)."""
    pnl = np.ascontiguousarray(pnl, dtype=np.float64)
    return _trade_ratios(pnl.shape[0], *trade_stats_nb(pnl))


def _trade_ratios(
    n: int, wins: int, gains: float, losses: float, total: float
) -> tuple[float, float, float]:
    """``(win_rate, profit_factor, expectancy)`` from ``trade_stats_nb``'s sums of ``n``
    closed trades."""
    if n == 0:
        return math.nan, math.nan, math.nan
    if losses > 0:
        factor = gains / losses
    else:
        factor = math.inf if gains > 0 else math.nan
    return wins / n, factor, total / n


def win_rate(pnl: np.ndarray) -> float:
    """Share of closed trades with ``pnl > 0``: ``count(pnl > 0) / count(pnl)``; NaN if none."""
    return _trade_metrics(pnl)[0]


def profit_factor(pnl: np.ndarray) -> float:
    """Gross profit over gross loss: ``sum(pnl[pnl > 0]) / -sum(pnl[pnl < 0])`` (each sum in
    trade order).

    NaN without trades or when there is neither profit nor loss; ``+inf`` with profit and no
    loss; 0.0 with losses only.
    """
    return _trade_metrics(pnl)[1]


def expectancy(pnl: np.ndarray) -> float:
    """Average profit per closed trade in money: ``sum(pnl) / count(pnl)`` (win rate x average
    win minus loss rate x average loss). NaN without trades."""
    return _trade_metrics(pnl)[2]


def exposure(position: np.ndarray) -> float:
    """Share of bars that end with an open position: ``count(position != 0) / n``; 0 without
    bars."""
    if len(position) == 0:
        return 0.0
    return float(np.count_nonzero(position)) / len(position)


def compute_metrics(
    equity: np.ndarray,
    initial: float,
    pnl: np.ndarray,
    position: np.ndarray,
    bars_per_year: float,
    *,
    open_trades: int = 0,
    total_fees: float = 0.0,
) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` as a dict of Python floats/ints.

    ``equity``: per-bar equity (float64), ``initial``: the starting cash, ``pnl``: profits of the
    closed trades (the open position is not a trade yet: it shows in the equity only),
    ``position``: per-bar side, ``bars_per_year``: ``bars_per_year(index)``. Keys:
    ``total_return``, ``cagr``, ``sharpe``, ``sortino``, ``max_drawdown`` (fraction),
    ``max_drawdown_duration`` (bars), ``win_rate``, ``profit_factor``, ``expectancy`` (money per
    closed trade), ``exposure``, ``n_trades`` (closed), ``open_trades`` (0 or 1),
    ``final_equity``, ``total_fees`` (as given), ``bars_per_year``.
    """
    equity = np.ascontiguousarray(equity, dtype=np.float64)
    # One fused pass: equal to sharpe_ratio(bar_returns(...)), max_drawdown(...), etc.
    pnl = np.ascontiguousarray(pnl, dtype=np.float64)
    return metrics_from_stats(
        equity_stats_nb(equity, float(initial)),
        n=equity.shape[0],
        final=float(equity[-1]) if equity.size else float(initial),
        initial=initial,
        trades=(pnl.shape[0], *trade_stats_nb(pnl)),
        exposed=exposure(position),
        bars_per_year=bars_per_year,
        open_trades=open_trades,
        total_fees=total_fees,
    )


def metrics_from_stats(
    stats: tuple[int, float, float, float, float, int, int, int],
    *,
    n: int,
    final: float,
    initial: float,
    trades: tuple[int, int, float, float, float],
    exposed: float,
    bars_per_year: float,
    open_trades: int = 0,
    total_fees: float = 0.0,
) -> dict[str, float]:
    """``compute_metrics`` from a pass over the equity: ``stats`` as ``equity_stats_nb`` (or
    ``fold_finish_nb``) gives them, ``n`` bars, the ``final`` equity (``initial`` without
    bars), the closed ``trades`` as ``(count, wins, gross profit, gross loss, total pnl)``
    (``trade_stats_nb``) and the ``exposed`` share of bars (``exposure``)."""
    count, mean, squares, downside, depth, peak, trough, recovery = stats
    duration = _duration(n, peak, trough, recovery)
    wins, factor, average = _trade_ratios(*trades)
    return {
        "total_return": final / initial - 1.0 if n else 0.0,
        "cagr": _cagr(final, n, initial, bars_per_year),
        "sharpe": _sharpe(count, mean, squares, bars_per_year),
        "sortino": _sortino(count, mean, downside, bars_per_year),
        "max_drawdown": float(depth),
        "max_drawdown_duration": duration,
        "win_rate": wins,
        "profit_factor": factor,
        "expectancy": average,
        "exposure": float(exposed),
        "n_trades": int(trades[0]),
        "open_trades": int(open_trades),
        "final_equity": float(final),
        "total_fees": float(total_fees),
        "bars_per_year": float(bars_per_year),
    }


def json_safe(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """``value`` with JSON-native types only, recursively: NaN and infinities become ``None``,
    numpy scalars Python numbers, arrays and tuples lists, timestamps ISO-8601 strings, mapping
    keys strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index):
        return [json_safe(v) for v in list(value)]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    if value is pd.NaT:
        return None
    return value
