"""Signal kernels of the built-in strategies (pure: numpy and numba only, never Django).

Every kernel turns indicator arrays into one int8 signal per bar: ``+1`` buy, ``-1`` sell, ``0``
hold. Inputs are float64 arrays of one length (a length mismatch raises ``ValueError``). A NaN in
any value a rule reads at bar ``i`` (this bar's or the previous bar's) gives ``0`` at ``i``, so the
indicators' warm-up NaNs never produce a signal. Bar 0 is always ``0``: every rule compares with
the previous bar. Each rule reads bars ``i - 1`` and ``i`` only, so none of them looks ahead.

The kernels are ``@njit(cache=True)`` functions; ``strategies.builtin`` calls them and the tests
hold a plain-Python reference for each. The input checks used by ``strategies.base`` for large
OHLCV frames (finite values, strictly increasing times) live here too, as single-pass kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit

from strategies.indicators import (
    BOLLINGER_DIRECT_MAX,
    bollinger_window_nb,
    ema_advance_nb,
    ema_pair_advance_nb,
)

__all__ = [
    "SMAPrefix",
    "band_reentry_signals_nb",
    "breakout_signals_nb",
    "cross_signals_nb",
    "first_non_finite_nb",
    "first_not_increasing_nb",
    "level_reentry_signals_nb",
    "sma_cross_from_prefix",
    "sma_cross_many_from_prefix",
    "sma_prefix",
]


@njit(cache=True)
def cross_signals_nb(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Crossover signals of ``fast`` against ``slow``.

    Buy at ``i`` when ``fast[i-1] < slow[i-1]`` and ``fast[i] > slow[i]``; sell at ``i`` when
    ``fast[i-1] > slow[i-1]`` and ``fast[i] < slow[i]``. Equality on either bar is not a cross:
    a touch (below, equal, below) never signals, and neither does a move that rests exactly on
    equality for one bar on its way through (below, equal, above), since no bar pair is strictly
    below then strictly above. NaN on either bar gives 0.
    """
    n = fast.shape[0]
    if slow.shape[0] != n:
        raise ValueError("fast and slow must have the same length")
    out = np.zeros(n, dtype=np.int8)
    # Branch-free (it vectorises; crossings are unpredictable branches). NaN compares false, so
    # a NaN on either bar leaves 0 without a separate test; buy and sell exclude each other.
    for i in range(1, n):
        buy = (fast[i - 1] < slow[i - 1]) & (fast[i] > slow[i])
        sell = (fast[i - 1] > slow[i - 1]) & (fast[i] < slow[i])
        out[i] = np.int8(buy) - np.int8(sell)
    return out


@njit(cache=True)
def level_reentry_signals_nb(x: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Signals when ``x`` leaves a zone below ``lower`` or above ``upper`` (oscillator reversion).

    Buy at ``i`` when ``x[i-1] <= lower`` and ``x[i] > lower``: it was in the lower zone (the
    level itself included) and has risen out of it. Sell at ``i`` when ``x[i-1] >= upper`` and
    ``x[i] < upper``: it was in the upper zone and has fallen out of it. NaN gives 0. With
    ``lower < upper`` a bar cannot be both.
    """
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int8)
    for i in range(1, n):  # branch-free; a buy wins when (lower >= upper) both hold
        buy = np.int8((x[i - 1] <= lower) & (x[i] > lower))
        sell = np.int8((x[i - 1] >= upper) & (x[i] < upper))
        out[i] = buy - sell * (1 - buy)
    return out


@njit(cache=True)
def band_reentry_signals_nb(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Signals when ``x`` comes back inside a moving band (band mean reversion).

    Buy at ``i`` when ``x[i-1] <= lower[i-1]`` and ``x[i] > lower[i]``: it was on or below the
    lower band and has closed back above it. Sell at ``i`` when ``x[i-1] >= upper[i-1]`` and
    ``x[i] < upper[i]``: it was on or above the upper band and has closed back below it. NaN on
    either bar gives 0. A bar cannot be both while ``lower <= upper``.
    """
    n = x.shape[0]
    if lower.shape[0] != n or upper.shape[0] != n:
        raise ValueError("x, lower and upper must have the same length")
    out = np.zeros(n, dtype=np.int8)
    for i in range(1, n):  # branch-free; a buy wins where both hold (bands crossed)
        buy = np.int8((x[i - 1] <= lower[i - 1]) & (x[i] > lower[i]))
        sell = np.int8((x[i - 1] >= upper[i - 1]) & (x[i] < upper[i]))
        out[i] = buy - sell * (1 - buy)
    return out


@njit(cache=True)
def breakout_signals_nb(x: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Channel breakout signals against the previous bar's channel.

    Buy at ``i`` when ``x[i] > upper[i-1]``; sell at ``i`` when ``x[i] < lower[i-1]``. The
    previous bar's channel is used because a channel that includes bar ``i`` can never be
    exceeded by it. Every bar that breaks out signals (a trend gives repeated buys); NaN gives 0.
    """
    n = x.shape[0]
    if upper.shape[0] != n or lower.shape[0] != n:
        raise ValueError("x, upper and lower must have the same length")
    out = np.zeros(n, dtype=np.int8)
    for i in range(1, n):  # branch-free; a buy wins where both hold (upper < lower)
        buy = np.int8(x[i] > upper[i - 1])
        sell = np.int8(x[i] < lower[i - 1])
        out[i] = buy - sell * (1 - buy)
    return out


@njit(cache=True, nogil=True)
def first_non_finite_nb(x: np.ndarray) -> int:
    """Index of the first NaN or infinite value of float64 ``x``, or -1 when all are finite.

    A branch-free counting pass first (``v - v`` is 0 for a finite ``v``, NaN otherwise): it
    vectorises and is what runs on valid data; the search runs only when something is found.
    """
    bad = 0
    for i in range(x.shape[0]):
        bad += (x[i] - x[i]) != 0.0
    if bad == 0:
        return -1
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            return i
    return -1


@njit(cache=True)
def first_not_increasing_nb(t: np.ndarray) -> int:
    """First index ``i`` with ``t[i] <= t[i-1]`` in int64 ``t``, or -1 when strictly increasing.

    Branch-free count first, search only on failure (as ``first_non_finite_nb``).
    """
    bad = 0
    for i in range(1, t.shape[0]):
        bad += t[i] <= t[i - 1]
    if bad == 0:
        return -1
    for i in range(1, t.shape[0]):
        if t[i] <= t[i - 1]:
            return i
    return -1


# ---------------------------------------------------------------------------------------------
# Fused strategy kernels: one pass from prices to signals (what ``generate_signals`` runs)
# ---------------------------------------------------------------------------------------------
#
# Each built-in strategy's rule as one kernel, for speed: no indicator array is materialised
# (MACD's line excepted). The work goes block by block (``_BLOCK`` bars): a sequential loop
# carries the running state (sums, averages) and writes the block's values into a small scratch
# buffer that stays in the CPU cache, then a loop that numba vectorises turns them into signals.
# The rules are those of the kernels above applied to ``strategies.indicators``, and the values
# compared are the indicators' own, to the last bit: the same EMA arithmetic
# (``ema_advance_nb``, so EMA, MACD), the same Wilder averages (RSI), exact max/min (Donchian),
# and correctly rounded window sums times ``1 / n`` (SMA, from exact prefix sums). The one
# exception is the Bollinger variance (prefix sums of deviations, restarted every block): it
# can round differently from ``bollinger`` by ~1e-13, which matters only where a band passes
# exactly through a close. A window of equal values gives exactly that value (mean) and 0
# (variance), as in pandas and ``sma``, so a flat market never crosses out of rounding noise.
# The tests hold every fused kernel equal to its composition, flat markets and ties included.
#
# The entry points release the GIL (``nogil``), so a sweep can run them in threads, and take an
# optional ``out`` array of len(x) int8 (zeroed first) for the signals.
# Inputs are finite float64 arrays (``validate_ohlcv`` guarantees it for ``generate_signals``);
# the first bar that can signal and everything before it follow the strategies' ``warmup``.

_BLOCK = 1024


@njit(cache=True)
def _signals_out(out: np.ndarray | None, size: int) -> np.ndarray:
    """The int8 output of a fused kernel, zeroed: ``out`` when given (the strategies pass an
    array numpy allocated: it reuses memory, where a fresh numba array costs page faults,
    ~0.2 ms per 1M bars), else a new one."""
    if out is None:
        return np.zeros(size, dtype=np.int8)
    out[:] = 0
    return out


@njit(cache=True)
def _window_sum_nb(x: np.ndarray, stop: int, n: int) -> float:
    """``sum(x[stop - n:stop])`` added in order."""
    total = 0.0
    for j in range(stop - n, stop):
        total += x[j]
    return total


@njit(cache=True)
def _changes_nb(x: np.ndarray, stop: int, n: int) -> int:
    """How many of the ``n - 1`` consecutive pairs inside ``x[stop - n:stop]`` differ (0: flat)."""
    count = 0
    for j in range(stop - n + 1, stop):
        count += x[j] != x[j - 1]
    return count


@njit(cache=True)
def _cross_block_nb(diff: np.ndarray, out: np.ndarray) -> None:
    """Crossover signals from ``diff = fast - slow`` (``diff[0]`` is the bar before
    ``out[0]``): buy when the sign goes from strictly negative to strictly positive, sell on
    the mirror; the sign of a float difference is exact, so this is ``cross_signals_nb``."""
    d0 = diff[:-1]
    d1 = diff[1:]
    for k in range(out.shape[0]):
        buy = np.int8((d0[k] < 0.0) & (d1[k] > 0.0))
        sell = np.int8((d0[k] > 0.0) & (d1[k] < 0.0))
        out[k] = buy - sell


@njit(cache=True)
def _sma_at_nb(x: np.ndarray, i: int, n: int) -> float:
    """The SMA of the window ending at bar ``i``, as the fused kernels compute it."""
    if _changes_nb(x, i + 1, n) == 0:
        return x[i]
    return _window_sum_nb(x, i + 1, n) * (1.0 / n)


@njit(cache=True)
def _prefix_base_nb(xs: np.ndarray) -> float:
    """The offset that makes ``_prefix_lanes_nb``'s sums exact with cheap arithmetic: a power
    of two at least four times the largest possible partial sum of ``xs`` (so every running
    total stays within [3/4, 5/4] of it), 0 when that would overflow, -1 when ``xs`` holds a
    NaN or an infinite value."""
    m = xs.shape[0]
    whole = m - m % 4
    b0 = b1 = b2 = b3 = 0.0  # four independent maxima: the comparisons overlap
    bad = 0.0  # v - v is 0 for a finite v, NaN otherwise: the sum says if any is not
    for t in range(0, whole, 4):
        v0, v1, v2, v3 = xs[t], xs[t + 1], xs[t + 2], xs[t + 3]
        b0 = max(b0, abs(v0))
        b1 = max(b1, abs(v1))
        b2 = max(b2, abs(v2))
        b3 = max(b3, abs(v3))
        bad += ((v0 - v0) + (v1 - v1)) + ((v2 - v2) + (v3 - v3))
    for t in range(whole, m):
        b0 = max(b0, abs(xs[t]))
        bad += xs[t] - xs[t]
    if bad != 0.0:
        return -1.0
    big = max(b0, b1, b2, b3)
    limit = 4.0 * (xs.shape[0] + 1) * big
    if not limit < 1e300:
        return 0.0
    base = 1.0
    while base < limit:
        base *= 2.0
    return base


@njit(cache=True)
def _prefix_exact_nb(xs: np.ndarray, hi: np.ndarray, lo: np.ndarray, changes: np.ndarray):
    """``_prefix_lanes_nb`` for one lane whose values are too large for an offset: TwoSum."""
    hi[0] = 0.0
    lo[0] = 0.0
    changes[0] = 0
    total = 0.0
    comp = 0.0
    count = 0
    prev = xs[0] if xs.shape[0] else 0.0
    for t in range(xs.shape[0]):
        v = xs[t]
        s = total + v
        b = s - total
        comp += (total - (s - b)) + (v - b)
        total = s
        count += np.int64(v != prev)
        prev = v
        hi[t + 1] = total
        lo[t + 1] = comp
        changes[t + 1] = count


@njit(cache=True)
def _prefix_lanes_nb(  # noqa: PLR0915, PLR0917 (numba: one loop, positional arguments)
    xa: np.ndarray,
    xb: np.ndarray,
    hi_a: np.ndarray,
    lo_a: np.ndarray,
    changes_a: np.ndarray,
    hi_b: np.ndarray,
    lo_b: np.ndarray,
    changes_b: np.ndarray,
) -> int:
    """Exact prefix sums and change counts of two stretches of a series at once.

    For lane ``a`` (likewise ``b``): ``hi_a[t] + lo_a[t]`` is ``base + sum(xa[:t])`` exactly
    (a double-double: every rounding error is kept in ``lo_a``), and ``changes_a[t]`` counts the
    ``j`` in ``(0, t)`` with ``xa[j] != xa[j - 1]``, for ``t`` in ``0..len(xa)``. The sum of
    the ``n`` values before ``t`` is ``(hi_a[t] - hi_a[t - n]) + (lo_a[t] - lo_a[t - n])``,
    correct to ~1e-30 of the stretch's total, so rounded once it is the window's correctly
    rounded sum whatever the stretch started at; the ``n`` values are all equal when
    ``changes_a[t] == changes_a[t - n + 1]``.

    Speed: ``base`` (``_prefix_base_nb``) keeps every total within [3/4, 5/4] of itself, so
    each step's rounding error is ``v - (s - total)`` (Fast2Sum, 3 operations instead of
    TwoSum's 6) and differences of totals are exact (Sterbenz). A running sum is bound by the
    latency of its additions; two lanes in one loop overlap them. A lane whose values are too
    large for an offset (~1e300) falls back to TwoSum from 0, which the readers also handle.
    ``xb`` may be shorter than ``xa`` (or empty). Returns 1 for the offset form (the
    differences of ``hi`` are then exact), 0 for the TwoSum fallback, -1 (nothing written)
    when a value is NaN or infinite.
    """
    base_a = _prefix_base_nb(xa)
    base_b = _prefix_base_nb(xb) if xb.shape[0] else 1.0
    if base_a < 0.0 or base_b < 0.0:
        return -1
    if base_a == 0.0 or base_b == 0.0:
        _prefix_exact_nb(xa, hi_a, lo_a, changes_a)
        _prefix_exact_nb(xb, hi_b, lo_b, changes_b)
        return 0
    ma = xa.shape[0]
    mb = xb.shape[0]
    hi_a[0] = base_a
    lo_a[0] = 0.0
    changes_a[0] = 0
    hi_b[0] = base_b
    lo_b[0] = 0.0
    changes_b[0] = 0
    ha = hi_a[1:]
    la = lo_a[1:]
    ca = changes_a[1:]
    hb = hi_b[1:]
    lb = lo_b[1:]
    cb = changes_b[1:]
    total_a = base_a
    comp_a = 0.0
    count_a = 0
    prev_a = xa[0] if ma else 0.0
    total_b = base_b
    comp_b = 0.0
    count_b = 0
    prev_b = xb[0] if mb else 0.0
    for t in range(mb):
        v = xa[t]
        s = total_a + v
        comp_a += v - (s - total_a)
        total_a = s
        count_a += np.int64(v != prev_a)
        prev_a = v
        ha[t] = total_a
        la[t] = comp_a
        ca[t] = count_a
        w = xb[t]
        s = total_b + w
        comp_b += w - (s - total_b)
        total_b = s
        count_b += np.int64(w != prev_b)
        prev_b = w
        hb[t] = total_b
        lb[t] = comp_b
        cb[t] = count_b
    for t in range(mb, ma):
        v = xa[t]
        s = total_a + v
        comp_a += v - (s - total_a)
        total_a = s
        count_a += np.int64(v != prev_a)
        prev_a = v
        ha[t] = total_a
        la[t] = comp_a
        ca[t] = count_a
    return 1


@njit(cache=True)
def _sma_pair_block_nb(  # noqa: PLR0917 (numba: arguments are positional)
    new: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    changes: np.ndarray,
    h: int,
    fast: int,
    slow: int,
    diff: np.ndarray,
    exact: bool,
) -> None:
    """``SMA(fast) - SMA(slow)`` of the bars whose values are ``new`` into ``diff``, from
    ``_prefix_lanes_nb`` buffers that start ``h >= max(fast, slow)`` bars before ``new[0]``.
    Each SMA is the correctly rounded window sum times ``1 / n`` (as ``sma``), or the value
    itself for a window of equal values."""
    inv_f = 1.0 / fast
    inv_s = 1.0 / slow
    h1 = hi[h + 1 :]
    l1 = lo[h + 1 :]
    c1 = changes[h + 1 :]
    hf = hi[h + 1 - fast :]
    lf = lo[h + 1 - fast :]
    cf = changes[h + 2 - fast :]
    hs = hi[h + 1 - slow :]
    ls = lo[h + 1 - slow :]
    cs = changes[h + 2 - slow :]
    if exact:  # the offset form: hi[t] - hi[t - n] is exact (TwoSum's error term would be 0)
        for k in range(new.shape[0]):
            a = h1[k]
            f = new[k] if c1[k] == cf[k] else ((a - hf[k]) + (l1[k] - lf[k])) * inv_f
            g = new[k] if c1[k] == cs[k] else ((a - hs[k]) + (l1[k] - ls[k])) * inv_s
            diff[k] = f - g
        return
    for k in range(new.shape[0]):
        a = h1[k]
        c = -hf[k]
        s = a + c  # TwoSum: s + err is exactly hi[t] - hi[t - n]
        b = s - a
        err = (a - (s - b)) + (c - b)
        f = new[k] if c1[k] == cf[k] else (s + (err + (l1[k] - lf[k]))) * inv_f
        c = -hs[k]
        s = a + c
        b = s - a
        err = (a - (s - b)) + (c - b)
        g = new[k] if c1[k] == cs[k] else (s + (err + (l1[k] - ls[k]))) * inv_s
        diff[k] = f - g


@njit(cache=True, nogil=True)
def sma_cross_signals_nb(
    x: np.ndarray, fast: int, slow: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``cross_signals_nb(sma(x, fast), sma(x, slow))`` in one pass (``SMACrossover``).

    Window sums are differences of exact (double-double) prefix sums restarted at every block
    (``_prefix_lanes_nb``): correctly rounded, so the means equal ``sma``'s (a sum times
    ``1 / n``; a window of equal values gives that value exactly) whatever bar the series starts
    at, and prices on a tick grid whose averages tie exactly stay tied. Bars before
    ``max(fast, slow)`` are 0. A NaN or infinite price raises ``ValueError`` (found while the
    prices are read, so ``SMACrossover`` needs no separate scan: ``finite_check_in_kernel``).
    """
    size = x.shape[0]
    out = _signals_out(out, size)
    if fast < 1 or slow < 1:
        raise ValueError("SMA lengths must be >= 1")
    h = max(fast, slow)
    if size <= h:
        if _prefix_base_nb(x) < 0.0:  # no signal, but the prices are still checked
            raise ValueError("sma_cross_signals_nb: the prices hold a NaN or infinite value")
        return out
    block = max(_BLOCK, 4 * h)
    width = h + block + 1
    hi = np.empty((2, width))
    lo = np.empty((2, width))
    changes = np.empty((2, width), dtype=np.int64)
    diff = np.empty(block + 1)
    a = h
    while a < size:
        # Two blocks per pass (their prefix sums in one loop); each from h bars before it.
        b = min(a + block, size)
        b2 = min(b + block, size)
        xb = x[b - h : b2] if b < size else x[0:0]
        form = _prefix_lanes_nb(
            x[a - h : b], xb, hi[0], lo[0], changes[0], hi[1], lo[1], changes[1]
        )
        if form < 0:
            raise ValueError("sma_cross_signals_nb: the prices hold a NaN or infinite value")
        exact = form == 1
        for lane, start, stop in ((0, a, b), (1, b, b2)):
            if start >= stop:
                continue
            m = stop - start + 1  # bar start - 1 (the previous bar) and the block
            new = x[start - 1 : stop]
            _sma_pair_block_nb(
                new, hi[lane], lo[lane], changes[lane], h - 1, fast, slow, diff, exact
            )
            _cross_block_nb(diff[:m], out[start:stop])
        a = b2
    return out


class SMAPrefix(NamedTuple):
    """The exact block prefix sums of a series that ``sma_cross_from_prefix`` shares across
    every ``(fast, slow)`` with both lengths at most ``history`` (``sma_prefix``).

    Block ``k`` covers bars ``k * block .. (k + 1) * block - 1``; its row of ``hi``, ``lo`` and
    ``changes`` (``_prefix_lanes_nb``'s form) starts at bar ``starts[k]``: ``history`` bars
    before the block, or bar 0. ``exact`` is False when a block needed the TwoSum fallback
    (values near 1e300): the readers then compute each pair on its own, since that form's
    sums depend on where a stretch starts.
    """

    hi: np.ndarray
    lo: np.ndarray
    changes: np.ndarray
    starts: np.ndarray
    block: int
    history: int
    exact: bool


@njit(cache=True, nogil=True)
def _sma_prefix_rows_nb(x: np.ndarray, history: int, block: int):
    """``SMAPrefix``'s arrays and ``exact`` (``sma_prefix``)."""
    size = x.shape[0]
    blocks = (size + block - 1) // block
    width = history + block + 1
    hi = np.empty((blocks, width))
    lo = np.empty((blocks, width))
    changes = np.empty((blocks, width), dtype=np.int64)
    starts = np.empty(blocks, dtype=np.int64)
    spare = np.empty(1)  # the second lane of _prefix_lanes_nb, not used
    spare_changes = np.empty(1, dtype=np.int64)
    exact = True
    for k in range(blocks):
        a = k * block
        starts[k] = max(0, a - history)
        stretch = x[starts[k] : min(a + block, size)]
        form = _prefix_lanes_nb(
            stretch, x[0:0], hi[k], lo[k], changes[k], spare, spare, spare_changes
        )
        if form < 0:
            raise ValueError("sma_prefix: the prices hold a NaN or infinite value")
        exact = exact and form == 1
    return hi, lo, changes, starts, exact


def sma_prefix(x: np.ndarray, history: int) -> SMAPrefix:
    """The shared part of ``sma_cross_signals_nb(x, fast, slow)`` for every pair with
    ``max(fast, slow) <= history``: exact prefix sums per block, each from ``history`` bars
    before it (the blocks as ``sma_cross_signals_nb``'s for that length). Costs about one
    ``sma_cross_signals_nb`` call; a NaN or infinite value raises ``ValueError``."""
    if history < 1:
        raise ValueError("history must be >= 1")
    block = max(_BLOCK, 4 * history)
    hi, lo, changes, starts, exact = _sma_prefix_rows_nb(x, history, block)
    return SMAPrefix(hi, lo, changes, starts, block, history, bool(exact))


@njit(cache=True, nogil=True)
def _sma_cross_many_nb(  # noqa: PLR0917 (numba: arguments are positional)
    x: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    changes: np.ndarray,
    starts: np.ndarray,
    block: int,
    fasts: np.ndarray,
    slows: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """The signals of several ``(fast, slow)`` pairs from the rows of ``sma_prefix`` (rows of
    ``out``, int8 pairs x bars): per block, ``_sma_pair_block_nb``'s exact form and
    ``_cross_block_nb`` for each pair, so each block's prefix rows are read once for all."""
    size = x.shape[0]
    out[:] = 0
    diff = np.empty(block + 1)
    for k in range(starts.shape[0]):
        for p in range(fasts.shape[0]):
            fast = fasts[p]
            slow = slows[p]
            start = max(k * block, fast, slow)
            stop = min((k + 1) * block, size)
            if start >= stop:
                continue
            _sma_pair_block_nb(
                x[start - 1 : stop], hi[k], lo[k], changes[k], start - 1 - starts[k], fast,
                slow, diff, True,
            )  # fmt: skip
            _cross_block_nb(diff[: stop - start + 1], out[p, start:stop])
    return out


def sma_cross_many_from_prefix(
    x: np.ndarray,
    prefix: SMAPrefix,
    pairs: Sequence[tuple[int, int]],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``sma_cross_signals_nb`` of each ``(fast, slow)`` of ``pairs``, as the rows of one int8
    array (``out`` when given, pairs x bars), in one call over the shared prefix sums (equal
    bit for bit)."""
    if out is None:
        out = np.empty((len(pairs), x.shape[0]), dtype=np.int8)
    if not prefix.exact or any(max(f, s) > prefix.history or min(f, s) < 1 for f, s in pairs):
        for row, (fast, slow) in enumerate(pairs):
            sma_cross_signals_nb(x, fast, slow, out[row])
        return out
    fasts = np.array([f for f, _ in pairs], dtype=np.int64)
    slows = np.array([s for _, s in pairs], dtype=np.int64)
    p = prefix
    return _sma_cross_many_nb(x, p.hi, p.lo, p.changes, p.starts, p.block, fasts, slows, out)


def sma_cross_from_prefix(
    x: np.ndarray, prefix: SMAPrefix, fast: int, slow: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``sma_cross_signals_nb(x, fast, slow, out)``, equal bit for bit, from the prefix sums
    ``sma_prefix(x, history)`` shared by a parameter sweep (only the two means and their
    comparison remain per pair). The window sums are correctly rounded whatever bar a stretch
    starts at, so the means, and the signals, are the single call's."""
    if fast < 1 or slow < 1:
        raise ValueError("SMA lengths must be >= 1")
    if max(fast, slow) > prefix.history or not prefix.exact:
        return sma_cross_signals_nb(x, fast, slow, out)
    row = np.empty(x.shape[0], dtype=np.int8) if out is None else out
    return sma_cross_many_from_prefix(x, prefix, [(fast, slow)], out=row.reshape(1, -1))[0]


@njit(cache=True)
def _block_end(a: int, size: int) -> int:
    """The end of the block that starts at bar ``a``: about ``_BLOCK`` bars on, at a multiple
    of 4 (``ema_advance_nb`` continues a series only at group boundaries)."""
    return min((a + _BLOCK) // 4 * 4, size)


@njit(cache=True)
def _ema_seeded_nb(x: np.ndarray, n: int, stop: int, scratch: np.ndarray) -> float:
    """The EMA(n) of ``x`` at bar ``stop - 1`` (>= n - 1), exactly as ``ema`` computes it."""
    value = _window_sum_nb(x, n, n) / n
    if stop > n:
        value = ema_advance_nb(x[n:stop], value, 2.0 / (n + 1.0), scratch[: stop - n], n)
    return value


@njit(cache=True, nogil=True)
def ema_cross_signals_nb(
    x: np.ndarray, fast: int, slow: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``cross_signals_nb(ema(x, fast), ema(x, slow))`` in one pass (``EMACrossover``).

    The EMAs are ``ema``'s to the last bit (``ema_advance_nb``). Bars before ``max(fast,
    slow)`` are 0.
    """
    size = x.shape[0]
    out = _signals_out(out, size)
    if fast < 1 or slow < 1:
        raise ValueError("EMA lengths must be >= 1")
    h = max(fast, slow)
    if size <= h:
        return out
    ema_f = np.empty(max(_BLOCK, h))
    ema_s = np.empty(max(_BLOCK, h))
    value_f = _ema_seeded_nb(x, fast, h, ema_f)
    value_s = _ema_seeded_nb(x, slow, h, ema_s)
    alpha_f = 2.0 / (fast + 1.0)
    alpha_s = 2.0 / (slow + 1.0)
    diff = np.empty(_BLOCK + 1)
    diff[0] = value_f - value_s
    a = h
    while a < size:
        b = _block_end(a, size)
        m = b - a
        value_f, value_s = ema_pair_advance_nb(
            x[a:b], value_f, alpha_f, value_s, alpha_s, diff[1 : m + 1], a
        )
        _cross_block_nb(diff[: m + 1], out[a:b])
        diff[0] = diff[m]
        a = b
    return out


@njit(cache=True, nogil=True)
def macd_cross_signals_nb(  # noqa: PLR0915 (numba: one kernel)
    x: np.ndarray, fast: int, slow: int, signal: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``cross_signals_nb(line, signal_line)`` of ``macd(x, fast, slow, signal)``
    (``MACDCrossover``), with ``macd``'s values to the last bit.

    The line (EMA(fast) - EMA(slow)) starts at bar ``h - 1`` with ``h = max(fast, slow)``; its
    EMA(signal) is seeded with the mean of its first ``signal`` values, and its groups of four
    count from the line's first bar, so it follows the line a few bars behind, cut at its own
    group boundaries. Bars before ``h + signal - 1`` are 0.
    """
    size = x.shape[0]
    out = _signals_out(out, size)
    if fast < 1 or slow < 1 or signal < 1:
        raise ValueError("MACD lengths must be >= 1")
    h = max(fast, slow)
    start = h + signal - 1  # the first bar that can signal
    if size <= start:
        return out
    alpha_f = 2.0 / (fast + 1.0)
    alpha_s = 2.0 / (slow + 1.0)
    alpha_g = 2.0 / (signal + 1.0)
    width = max(_BLOCK, h)
    scratch = np.empty(width)
    lines = np.empty(_BLOCK)  # the block's line values
    pending = np.empty(_BLOCK + 8)  # line values not yet taken by the signal EMA, from bar first
    signal_line = np.empty(_BLOCK + 8)
    diff = np.empty(_BLOCK + 9)
    value_f = _ema_seeded_nb(x, fast, h, scratch)
    value_s = _ema_seeded_nb(x, slow, h, scratch)
    anchor = h - 1  # the line's first bar: the signal EMA's groups of four count from it
    seed = value_f - value_s  # the sum of the line's first ``signal`` values, from bar h - 1
    value_g = seed / signal
    previous = seed - value_g  # line - signal line on the bar before ``first``
    first = start
    count = 0
    a = h
    while a < size:  # blocks cut at multiples of 4 (the price EMAs' groups)
        b = _block_end(a, size)
        m = b - a
        if a >= start:  # the usual case: the lines go straight to the pending buffer
            value_f, value_s = ema_pair_advance_nb(
                x[a:b], value_f, alpha_f, value_s, alpha_s, pending[count : count + m], a
            )
            count += m
        else:
            value_f, value_s = ema_pair_advance_nb(
                x[a:b], value_f, alpha_f, value_s, alpha_s, lines[:m], a
            )
            for k in range(m):
                if a + k < start:  # bars h .. start - 1 complete the signal line's seed
                    seed += lines[k]
                    if a + k == start - 1:
                        value_g = seed / signal
                        previous = lines[k] - value_g
                else:
                    pending[count] = lines[k]
                    count += 1
        # The signal EMA takes the pending lines up to one of its own group boundaries (all of
        # them at the end), so its values are ``macd``'s to the last bit.
        take = count if b == size else count - (first + count - anchor) % 4
        if take > 0:
            value_g = ema_advance_nb(
                pending[:take], value_g, alpha_g, signal_line[:take], first - anchor
            )
            diff[0] = previous
            for k in range(take):
                diff[k + 1] = pending[k] - signal_line[k]
            _cross_block_nb(diff[: take + 1], out[first : first + take])
            previous = diff[take]
            for k in range(count - take):
                pending[k] = pending[take + k]
            count -= take
            first += take
        a = b
    return out


@njit(cache=True, nogil=True)
def rsi_reentry_signals_nb(
    close: np.ndarray, n: int, lower: float, upper: float, out: np.ndarray | None = None
) -> np.ndarray:
    """``level_reentry_signals_nb(rsi(close, n), lower, upper)`` in one pass (``RSIReversion``).

    The averages use exactly the arithmetic of ``strategies.indicators.rsi`` (so the RSI values
    are identical); the RSI and the rule run vectorised per block. Bars before ``n + 1`` are 0.
    """
    size = close.shape[0]
    out = _signals_out(out, size)
    if n < 1:
        raise ValueError("RSI period must be >= 1")
    if size <= n + 1:
        return out
    keep = (n - 1.0) / n
    part = 1.0 / n
    avg_gain = 0.0
    avg_loss = 0.0
    for i in range(1, n + 1):
        change = close[i] - close[i - 1]
        avg_gain += change if change > 0.0 else 0.0
        avg_loss += -change if change < 0.0 else 0.0
    avg_gain /= n
    avg_loss /= n
    gains = np.empty(_BLOCK)
    losses = np.empty(_BLOCK)
    values = np.empty(_BLOCK + 1)
    total = avg_gain + avg_loss
    values[0] = 50.0 if total == 0.0 else 100.0 * avg_gain / total  # the RSI at bar n
    for a in range(n + 1, size, _BLOCK):
        b = min(a + _BLOCK, size)
        m = b - a
        now = close[a:b]
        before = close[a - 1 : b - 1]
        for k in range(m):
            change = now[k] - before[k]
            avg_gain = avg_gain * keep + (change if change > 0.0 else 0.0) * part
            avg_loss = avg_loss * keep + (-change if change < 0.0 else 0.0) * part
            gains[k] = avg_gain
            losses[k] = avg_loss
        rsi = values[1:]
        for k in range(m):
            total = gains[k] + losses[k]
            rsi[k] = 50.0 if total == 0.0 else 100.0 * gains[k] / total
        prev = values[:-1]
        block_out = out[a:b]
        for k in range(m):
            buy = np.int8((prev[k] <= lower) & (rsi[k] > lower))
            sell = np.int8((prev[k] >= upper) & (rsi[k] < upper))
            block_out[k] = buy - sell * (1 - buy)
        values[0] = values[m]
    return out


@njit(cache=True)
def _shifted_prefix_block_nb(  # noqa: PLR0917 (numba: arguments are positional)
    x: np.ndarray,
    start: int,
    stop: int,
    shift: float,
    sums: np.ndarray,
    squares: np.ndarray,
    changes: np.ndarray,
) -> None:
    """Local prefix sums of ``d = x - shift`` and ``d * d`` (Bollinger's variance): local
    prefix sums of both, and the change counts."""
    m = stop - start
    xs = x[start:stop]
    sums[0] = 0.0
    squares[0] = 0.0
    changes[0] = 0
    total = 0.0
    total2 = 0.0
    count = 0
    for t in range(m):
        d = xs[t] - shift
        total += d
        total2 += d * d
        if t > 0:
            count += np.int64(xs[t] != xs[t - 1])
        sums[t + 1] = total
        squares[t + 1] = total2
        changes[t + 1] = count


@njit(cache=True)
def _bollinger_direct_signals_nb(
    close: np.ndarray, n: int, k: float, out: np.ndarray
) -> np.ndarray:
    """``bollinger_reentry_signals_nb`` for short windows, each window's mean and variance from
    its own values, as ``bollinger`` computes them."""
    size = close.shape[0]
    prev_lower = prev_upper = np.nan
    for i in range(n - 1, size):
        mean, variance = bollinger_window_nb(close, i, n)
        width = k * math.sqrt(variance)
        low_band = mean - width
        high_band = mean + width
        if i >= n:
            buy = np.int8((close[i - 1] <= prev_lower) & (close[i] > low_band))
            sell = np.int8((close[i - 1] >= prev_upper) & (close[i] < high_band))
            out[i] = buy - sell * (1 - buy)
        prev_lower = low_band
        prev_upper = high_band
    return out


@njit(cache=True, nogil=True)
def bollinger_reentry_signals_nb(
    close: np.ndarray, n: int, k: float, out: np.ndarray | None = None
) -> np.ndarray:
    """``band_reentry_signals_nb(close, lower, upper)`` of ``bollinger(close, n, k)`` in one pass
    (``BollingerReversion``).

    Mean and population variance of each window from local prefix sums of ``close - shift``
    and its square (``shift``: the bar before the block, so the sums barely cancel), restarted
    every block; a window of equal values has variance 0. Bars before ``n`` are 0.

    A window of only two price levels can put a band exactly on a close (e.g. 16 closes at one
    level and 4 at another put the 2-sigma upper band on the higher one): the rule then compares
    equal numbers and rounding decides, so there this kernel and ``bollinger``'s arrays may
    differ (tested: only there). Short windows (``BOLLINGER_DIRECT_MAX``), where such ties
    are the rule rather than the exception, use ``bollinger``'s own arithmetic.
    """
    size = close.shape[0]
    out = _signals_out(out, size)
    if n < 1:
        raise ValueError("Bollinger length must be >= 1")
    if size <= n:
        return out
    if n <= BOLLINGER_DIRECT_MAX:  # as ``bollinger`` does: each window from its own values
        return _bollinger_direct_signals_nb(close, n, k, out)
    h = n
    block = max(_BLOCK, 4 * h)
    sums = np.empty(h + block + 1)
    squares = np.empty(h + block + 1)
    changes = np.empty(h + block + 1, dtype=np.int64)
    lower = np.empty(block + 1)
    upper = np.empty(block + 1)
    inv = 1.0 / n
    for a in range(h, size, block):
        b = min(a + block, size)
        m = b - a + 1  # bar a - 1 and the block
        shift = close[a - 1]
        _shifted_prefix_block_nb(close, a - h, b, shift, sums, squares, changes)
        new = close[a - 1 : b]
        s1 = sums[h:]
        s0 = sums[:m]
        q1 = squares[h:]
        q0 = squares[:m]
        c1 = changes[h:]
        c0 = changes[1 : m + 1]
        for j in range(m):
            mean = s1[j] - s0[j]
            mean *= inv
            variance = (q1[j] - q0[j]) * inv - mean * mean
            flat = c1[j] == c0[j]
            mean = new[j] if flat else shift + mean
            variance = 0.0 if flat else max(variance, 0.0)
            width = k * math.sqrt(variance)
            lower[j] = mean - width
            upper[j] = mean + width
        x0 = close[a - 1 : b - 1]
        x1 = close[a:b]
        block_out = out[a:b]
        for j in range(m - 1):
            buy = np.int8((x0[j] <= lower[j]) & (x1[j] > lower[j + 1]))
            sell = np.int8((x0[j] >= upper[j]) & (x1[j] < upper[j + 1]))
            block_out[j] = buy - sell * (1 - buy)
    return out


@njit(cache=True, nogil=True)
def donchian_breakout_signals_nb(  # noqa: PLR0915 (numba: one kernel, no helpers in the loop)
    high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``breakout_signals_nb(close, upper, lower)`` of ``donchian(high, low, n)`` in one pass
    (``DonchianBreakout``): buy when the close is above the highest high of the ``n`` bars
    before it, sell when below their lowest low (a buy wins if both). Max and min are exact, so
    the channel equals ``donchian``'s. Bars before ``n`` are 0.

    Channels of one or two bars are read directly; longer ones with van Herk/Gil-Werman blocks
    of ``n`` bars (a window is the tail of one block and the head of the next), the block
    maxima kept in small buffers.
    """
    size = close.shape[0]
    out = _signals_out(out, size)
    if n < 1:
        raise ValueError("Donchian length must be >= 1")
    if size <= n:
        return out
    if n <= 2:
        for i in range(n, size):
            up = high[i - 1]
            down = low[i - 1]
            for j in range(i - n, i - 1):
                up = high[j] if high[j] > up else up
                down = low[j] if low[j] < down else down
            buy = np.int8(close[i] > up)
            sell = np.int8(close[i] < down)
            out[i] = buy - sell * (1 - buy)
        return out
    head_hi = np.empty(n)  # max of high from the block's start to each bar
    head_lo = np.empty(n)
    tail_hi = np.empty(n + 1)  # max of high from each bar to the end of the previous block
    tail_lo = np.empty(n + 1)
    tail_hi[n] = -np.inf
    tail_lo[n] = np.inf
    # The channel of the bars ending at j decides bar j + 1; j runs over 0..size - 2. Slices,
    # not offset indexing, so numba needs no negative-index handling in the loops.
    for a in range(0, size - 1, n):
        e = min(a + n, size - 1)
        m = e - a
        block_hi = high[a:e]
        block_lo = low[a:e]
        up = -np.inf
        down = np.inf
        for t in range(m):
            up = max(up, block_hi[t])
            down = min(down, block_lo[t])
            head_hi[t] = up
            head_lo[t] = down
        if a == 0:
            if e == n:  # the first full channel: bars 0..n-1, for bar n
                buy = np.int8(close[n] > head_hi[n - 1])
                sell = np.int8(close[n] < head_lo[n - 1])
                out[n] = buy - sell * (1 - buy)
            continue
        before_hi = high[a - n : a]
        before_lo = low[a - n : a]
        up = -np.inf
        down = np.inf
        for t in range(n - 1, -1, -1):
            up = max(up, before_hi[t])
            down = min(down, before_lo[t])
            tail_hi[t] = up
            tail_lo[t] = down
        nxt = close[a + 1 : e + 1]
        block_out = out[a + 1 : e + 1]
        later_hi = tail_hi[1:]
        later_lo = tail_lo[1:]
        for t in range(m):
            hi = max(later_hi[t], head_hi[t])
            lo = min(later_lo[t], head_lo[t])
            buy = np.int8(nxt[t] > hi)
            sell = np.int8(nxt[t] < lo)
            block_out[t] = buy - sell * (1 - buy)
    return out
