"""Technical indicators on plain arrays (pure: numpy and numba only, never Django).

Every indicator is a numba kernel ``<name>_nb`` (``@njit(cache=True)``: float64 arrays and int
periods in, new float64 arrays out, callable from other kernels such as a strategy's signal
kernel) and a thin public wrapper ``<name>`` that validates its inputs and calls the kernel.
Kernels do not validate: give them 1-D float64 arrays of equal length and periods >= 1 (a
period < 1 reads outside the arrays).

Conventions
-----------
- Inputs: one-dimensional sequences of numbers (numpy arrays, lists, pandas Series), converted to
  contiguous float64 (copied only when needed; inputs are never modified). The inputs of one
  indicator must have equal lengths. Periods are Python or numpy integers >= 1 (``bool`` and
  floats such as ``14.0`` are refused). Violations raise ``ValueError`` naming the argument.
- Outputs: new float64 arrays as long as the input and aligned with it. ``out[i]`` depends on
  bars ``0..i`` only: appending or changing later bars never changes it (no lookahead).
- Warm-up: the leading outputs without enough history are NaN; each function states how many.
  A period longer than the series gives all NaN; an empty series gives empty outputs.
- Missing values: a NaN or +-inf input is missing, and a bar is missing when any of the inputs
  the indicator reads at that bar is. Nothing raises on missing data. Two rules:

  * windowed indicators (``sma``, ``wma``, ``bollinger``, ``donchian``, ``stochastic``,
    ``vwap``): an output is NaN when its window holds a missing value, so one missing bar blanks
    the ``n`` outputs whose windows contain it, then the indicator recovers by itself;
  * recursive indicators (``ema``, ``rsi``, ``macd``, ``atr``, ``obv``): a missing bar's output
    is NaN and it ends the history: the indicator restarts at the next valid bar with a fresh
    warm-up, exactly as if the series began there. Leading NaNs follow the same rule, so an
    indicator of an indicator works: ``ema(macd_line, 9)`` seeds on the first 9 valid values.

- Cost and accuracy: one O(len) pass per kernel; running sums for windows and monotonic deques
  for rolling max/min. The running sums are compensated (TwoSum, and TwoProduct for the WMA
  weights), so a window's sum is as good as summing the window afresh however long the series,
  and a huge value (a spike, the old level before a crash) leaves no measurable residue once
  it has left the window (tested: spikes of 1e12 among prices near 0.5). The Bollinger
  variance uses sums of deviations from a recent mean, not of raw prices, so it does not
  cancel away; those sums are rebuilt from the window (O(n), rare) when the mean drifts far
  from the shift or a squared spike leaves the window.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import NamedTuple, TypeAlias

import numpy as np
from numba import njit

__all__ = [
    "BollingerBands",
    "DonchianChannel",
    "Macd",
    "Stochastic",
    "atr",
    "atr_nb",
    "bollinger",
    "bollinger_nb",
    "donchian",
    "donchian_nb",
    "ema",
    "ema_advance_nb",
    "ema_nb",
    "ema_pair_advance_nb",
    "macd",
    "macd_nb",
    "obv",
    "obv_nb",
    "rsi",
    "rsi_nb",
    "sma",
    "sma_nb",
    "stochastic",
    "stochastic_nb",
    "vwap",
    "vwap_nb",
    "wma",
    "wma_nb",
]

ArrayLike: TypeAlias = np.ndarray | Sequence[float]


class Macd(NamedTuple):
    """``macd`` output: ``line, signal_line, hist = macd(close)`` also works."""

    line: np.ndarray
    signal_line: np.ndarray
    hist: np.ndarray


class BollingerBands(NamedTuple):
    """``bollinger`` output, in the order (middle, upper, lower)."""

    middle: np.ndarray
    upper: np.ndarray
    lower: np.ndarray


class Stochastic(NamedTuple):
    """``stochastic`` output: the %K and %D lines."""

    k_line: np.ndarray
    d_line: np.ndarray


class DonchianChannel(NamedTuple):
    """``donchian`` output, in the order (upper, lower, middle)."""

    upper: np.ndarray
    lower: np.ndarray
    middle: np.ndarray


# ---------------------------------------------------------------------------------------------
# Numba kernels (inputs assumed valid: 1-D contiguous float64 of equal lengths, periods >= 1)
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _two_sum_nb(a: float, b: float) -> tuple[float, float]:
    """``(s, err)`` with ``s = fl(a + b)`` and ``s + err == a + b`` exactly (Knuth's TwoSum).

    Running sums keep ``err`` in a compensation term: a value that enters and later leaves a
    window then leaves no rounding residue behind, however large it was or however long the
    series is.
    """
    s = a + b
    b_part = s - a
    return s, (a - (s - b_part)) + (b - b_part)


@njit(cache=True)
def _two_product_nb(a: float, b: float) -> tuple[float, float]:
    """``(p, err)`` with ``p = fl(a * b)`` and ``p + err == a * b`` exactly (Dekker).

    Veltkamp splitting; valid while ``|a|`` and ``|b|`` stay below about 1e300.
    """
    p = a * b
    big = 134217729.0 * a  # 2**27 + 1
    a_hi = big - (big - a)
    a_lo = a - a_hi
    big = 134217729.0 * b
    b_hi = big - (big - b)
    b_lo = b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


@njit(cache=True)
def _rolling_extreme_nb(x: np.ndarray, n: int, sign: float) -> np.ndarray:
    """``sign * max(sign * x[i-n+1..i])``: the rolling max (sign 1) or min (sign -1); NaN for
    the first n-1 bars and for windows holding a missing value.

    van Herk/Gil-Werman: with blocks of ``n`` bars aligned at bar 0, a window is the tail of one
    block and the head of the next, so its extreme is the larger of a suffix maximum and a
    prefix maximum, each computed once per bar (~3 comparisons a bar, no data-dependent
    branches, unlike a monotonic deque). Max is exact, so the result does not depend on the
    grouping. Missing values count as -inf there and blank their windows through ``last_bad``.
    """
    return _rolling_extreme_into_nb(x, n, sign, np.empty(x.shape[0]), np.empty(x.shape[0]))


@njit(cache=True)
def _rolling_extreme_into_nb(
    x: np.ndarray, n: int, sign: float, out: np.ndarray, tail: np.ndarray
) -> np.ndarray:
    """``_rolling_extreme_nb`` writing into ``out``; ``tail`` is scratch (see ``_sma_into_nb``).

    ``out`` holds the prefix maxima first, then the result, in place; ``tail[i]`` is the max
    from ``i`` to the end of ``i``'s block.
    """
    size = x.shape[0]
    for b in range(0, size, n):
        stop = min(b + n, size)
        # Both scans in one loop: two independent comparison chains run in parallel.
        up = -np.inf
        down = -np.inf
        for k in range(stop - b):
            i = b + k
            v = sign * x[i]
            v = v if v - v == 0.0 else -np.inf  # missing: never the extreme
            up = v if v > up else up
            out[i] = up
            j = stop - 1 - k
            w = sign * x[j]
            w = w if w - w == 0.0 else -np.inf
            down = w if w > down else down
            tail[j] = down
    last_bad = -1
    for i in range(size):
        if not math.isfinite(x[i]):
            last_bad = i
        if i < n - 1 or last_bad > i - n:
            out[i] = np.nan
        else:
            a = tail[i - n + 1]
            m = out[i]
            out[i] = sign * (a if a > m else m)
    return out


@njit(cache=True)
def _rolling_max_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Max of ``x[i-n+1..i]``; NaN for the first n-1 bars and windows holding a missing value."""
    return _rolling_extreme_nb(x, n, 1.0)


@njit(cache=True)
def _rolling_min_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Min of ``x[i-n+1..i]``; NaN for the first n-1 bars and windows holding a missing value."""
    return _rolling_extreme_nb(x, n, -1.0)


@njit(cache=True)
def sma_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Simple moving average kernel; see ``sma``."""
    return _sma_into_nb(x, n, np.empty(x.shape[0]))


@njit(cache=True)
def _sma_into_nb(x: np.ndarray, n: int, out: np.ndarray) -> np.ndarray:
    """``sma_nb`` writing into ``out`` (len(x) float64), which it returns.

    The ``_into`` kernels let the Python wrappers allocate outputs with numpy: a large array
    allocated inside numba is fresh memory paged in 4 KiB at a time (~1.5 ms per 8 MB), while
    numpy's allocator reuses memory and asks for huge pages.
    """
    size = x.shape[0]
    out[:] = np.nan
    total = 0.0
    comp = 0.0  # compensation: total + comp is the window's sum
    last_bad = -1
    run = 0  # length of the run of equal values ending at i: such a window's mean is the value
    inv = 1.0 / n  # a multiplication: the fused strategy kernels vectorise it, not a division
    for i in range(size):
        v = x[i]
        if math.isfinite(v):
            total, err = _two_sum_nb(total, v)
            comp += err
            run = run + 1 if i > 0 and v == x[i - 1] else 1
        else:
            last_bad = i
            run = 0
        if i >= n:
            old = x[i - n]
            if math.isfinite(old):
                total, err = _two_sum_nb(total, -old)
                comp += err
        if i >= n - 1 and last_bad <= i - n:
            out[i] = v if run >= n else (total + comp) * inv
    return out


@njit(cache=True)
def ema_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average kernel; see ``ema``."""
    return _ema_into_nb(x, n, np.empty(x.shape[0]))


@njit(cache=True)
def _ema_group_nb(  # noqa: PLR0917 (numba: arguments are positional)
    x1: float, x2: float, x3: float, x4: float, value: float, alpha: float, keep: float
) -> tuple[float, float, float, float]:
    """The four values of one full group of ``ema_advance_nb`` (the same expressions)."""
    keep2 = keep * keep
    c2 = alpha * (x2 - x1)
    c3 = keep * c2 + alpha * (x3 - x1)
    c4 = keep * c3 + alpha * (x4 - x1)
    u = value - x1
    return (
        x1 + keep * u,
        x1 + (keep2 * u + c2),
        x1 + (keep2 * keep * u + c3),
        x1 + (keep2 * keep2 * u + c4),
    )


@njit(cache=True)
def ema_advance_nb(
    xs: np.ndarray, value: float, alpha: float, out: np.ndarray, first: int
) -> float:
    """Continue an EMA (smoothing ``alpha``) from ``value`` over ``xs`` into ``out``; returns
    the last value. ``first`` is the position of ``xs[0]`` counted from the first bar of the
    series (after a missing value: from the first bar of the restarted series).

    This is the one EMA arithmetic of the project (``ema``, ``macd`` and the fused strategy
    kernels all advance with it, so their values agree to the last bit). Each step is
    ``e = x + (1 - alpha) * (e - x)`` (= ``e + alpha * (x - e)``), taken four bars at a time
    from positions that are multiples of 4 onwards: relative to the group's first input ``r``,
    ``e_j = r + ((1 - alpha)**j * (e - r) + c_j)`` where the ``c`` depend on the inputs only, so
    the loop-carried chain is three operations per four bars instead of three per bar. A
    market that stops moving converges to exactly its price (the deviations reach 0), so two
    EMAs of a flat market end up equal instead of an ulp apart.

    A group cut short by the end of ``xs`` uses the group's own formulas (each value depends on
    bars up to its own only), so the EMA of a prefix of a series equals, bit for bit, the EMA
    of the whole series on that prefix: what a bot computes live is what the backtest computed.
    To continue a series in pieces, cut it at positions that are multiples of 4.
    """
    keep = 1.0 - alpha
    keep2 = keep * keep
    keep3 = keep2 * keep
    m = xs.shape[0]
    k = 0
    while k < m and (first + k) % 4 != 0:  # single steps up to a group boundary
        value = xs[k] + keep * (value - xs[k])
        out[k] = value
        k += 1
    while k + 4 <= m:
        e1, e2, e3, e4 = _ema_group_nb(xs[k], xs[k + 1], xs[k + 2], xs[k + 3], value, alpha, keep)
        out[k] = e1
        out[k + 1] = e2
        out[k + 2] = e3
        out[k + 3] = e4
        value = e4
        k += 4
    if k < m:  # a group cut short by the end of xs: the group's formulas, as far as they go
        r = xs[k]
        u = value - r
        value = r + keep * u
        out[k] = value
        if k + 1 < m:
            c2 = alpha * (xs[k + 1] - r)
            value = r + (keep2 * u + c2)
            out[k + 1] = value
            if k + 2 < m:
                c3 = keep * c2 + alpha * (xs[k + 2] - r)
                value = r + (keep3 * u + c3)
                out[k + 2] = value
    return value


@njit(cache=True)
def ema_pair_advance_nb(  # noqa: PLR0917 (numba: arguments are positional)
    xs: np.ndarray,
    value_a: float,
    alpha_a: float,
    value_b: float,
    alpha_b: float,
    diff: np.ndarray,
    first: int,
) -> tuple[float, float]:
    """Two EMAs of ``xs`` advanced together, writing ``ema_a - ema_b`` per element into
    ``diff``; returns the last two values. Each EMA is exactly ``ema_advance_nb``'s (the same
    expressions in the same order), but their dependency chains overlap in one loop, about
    twice as fast as two passes: the EMA crossover and the MACD line."""
    keep_a = 1.0 - alpha_a
    keep_b = 1.0 - alpha_b
    m = xs.shape[0]
    k = 0
    while k < m and (first + k) % 4 != 0:
        value_a = xs[k] + keep_a * (value_a - xs[k])
        value_b = xs[k] + keep_b * (value_b - xs[k])
        diff[k] = value_a - value_b
        k += 1
    while k + 4 <= m:
        x1 = xs[k]
        x2 = xs[k + 1]
        x3 = xs[k + 2]
        x4 = xs[k + 3]
        a1, a2, a3, a4 = _ema_group_nb(x1, x2, x3, x4, value_a, alpha_a, keep_a)
        b1, b2, b3, b4 = _ema_group_nb(x1, x2, x3, x4, value_b, alpha_b, keep_b)
        diff[k] = a1 - b1
        diff[k + 1] = a2 - b2
        diff[k + 2] = a3 - b3
        diff[k + 3] = a4 - b4
        value_a = a4
        value_b = b4
        k += 4
    if k < m:  # a group cut short: ema_advance_nb's tail, for both
        rest = m - k
        scratch_a = np.empty(rest)
        scratch_b = np.empty(rest)
        value_a = ema_advance_nb(xs[k:], value_a, alpha_a, scratch_a, 0)
        value_b = ema_advance_nb(xs[k:], value_b, alpha_b, scratch_b, 0)
        for j in range(rest):
            diff[k + j] = scratch_a[j] - scratch_b[j]
    return value_a, value_b


@njit(cache=True)
def _ema_into_nb(x: np.ndarray, n: int, out: np.ndarray) -> np.ndarray:
    """``ema_nb`` writing into ``out`` (see ``_sma_into_nb``).

    Per run of valid values: NaN for the first ``n - 1``, the seed (their mean, summed in
    order) on the n-th, then ``ema_advance_nb``.
    """
    size = x.shape[0]
    out[:] = np.nan
    alpha = 2.0 / (n + 1.0)
    start = 0
    while start < size:
        if not math.isfinite(x[start]):
            start += 1
            continue
        stop = start
        while stop < size and math.isfinite(x[stop]):
            stop += 1
        if stop - start >= n:
            seed = 0.0
            for j in range(start, start + n):
                seed += x[j]
            value = seed / n
            out[start + n - 1] = value
            begin = start + n
            ema_advance_nb(x[begin:stop], value, alpha, out[begin:stop], n)
        start = stop
    return out


@njit(cache=True)
def wma_nb(x: np.ndarray, n: int) -> np.ndarray:
    """Linearly weighted moving average kernel; see ``wma``."""
    size = x.shape[0]
    out = np.full(size, np.nan)
    denominator = n * (n + 1) / 2.0
    # plain: the sum of the window ending at the previous bar; weighted: the weighted sum. Both
    # compensated; the rounding of the products n * v is caught too (TwoProduct).
    plain = 0.0
    plain_comp = 0.0
    weighted = 0.0
    weighted_comp = 0.0
    last_bad = -1
    for i in range(size):
        v = x[i]
        if not math.isfinite(v):
            last_bad = i
            v = 0.0
        # Every older value's weight drops by one (the oldest, weight 1, leaves); v enters at n.
        product, product_err = _two_product_nb(float(n), v)
        weighted, err = _two_sum_nb(weighted, product)
        weighted_comp += err + product_err
        weighted, err = _two_sum_nb(weighted, -plain)
        weighted_comp += err - plain_comp
        plain, err = _two_sum_nb(plain, v)
        plain_comp += err
        if i >= n:
            old = x[i - n]
            if math.isfinite(old):
                plain, err = _two_sum_nb(plain, -old)
                plain_comp += err
        if i >= n - 1 and last_bad <= i - n:
            out[i] = (weighted + weighted_comp) / denominator
    return out


@njit(cache=True)
def _rsi_value_nb(avg_gain: float, avg_loss: float) -> float:
    total = avg_gain + avg_loss
    if total == 0.0:
        return 50.0
    return 100.0 * avg_gain / total


@njit(cache=True)
def rsi_nb(close: np.ndarray, n: int) -> np.ndarray:
    """Wilder's RSI kernel; see ``rsi``."""
    return _rsi_into_nb(close, n, np.empty(close.shape[0]))


@njit(cache=True)
def _rsi_into_nb(close: np.ndarray, n: int, out: np.ndarray) -> np.ndarray:
    """``rsi_nb`` writing into ``out`` (see ``_sma_into_nb``)."""
    size = close.shape[0]
    out[:] = np.nan
    # Wilder's (avg * (n - 1) + x) / n as avg * keep + x * part: a multiply and an add on the
    # loop-carried chain instead of a division (~3x faster; differs by an ulp or two per step,
    # and the smoothing contracts those away, so the error stays ~n ulps).
    keep = (n - 1.0) / n
    part = 1.0 / n
    have_prev = False
    prev = 0.0
    count = 0
    avg_gain = 0.0
    avg_loss = 0.0
    for i in range(size):
        c = close[i]
        if not math.isfinite(c):
            have_prev = False
            continue
        if not have_prev:
            have_prev = True
            prev = c
            count = 0
            avg_gain = 0.0
            avg_loss = 0.0
            continue
        change = c - prev
        prev = c
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        if count < n:
            avg_gain += gain  # a plain sum until the seed is complete
            avg_loss += loss
            count += 1
            if count < n:
                continue
            avg_gain /= n
            avg_loss /= n
        else:
            avg_gain = avg_gain * keep + gain * part
            avg_loss = avg_loss * keep + loss * part
        out[i] = _rsi_value_nb(avg_gain, avg_loss)
    return out


@njit(cache=True)
def macd_nb(
    close: np.ndarray, fast: int, slow: int, signal: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD kernel; returns (line, signal_line, hist); see ``macd``."""
    size = close.shape[0]
    return _macd_into_nb(close, fast, slow, signal, np.empty(size), np.empty(size), np.empty(size))


@njit(cache=True)
def _macd_into_nb(  # noqa: PLR0917 (numba: outputs are passed positionally)
    close: np.ndarray,
    fast: int,
    slow: int,
    signal: int,
    line: np.ndarray,
    signal_line: np.ndarray,
    hist: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``macd_nb`` writing into ``line``, ``signal_line`` and ``hist`` (see ``_sma_into_nb``)."""
    _ema_into_nb(close, fast, line)
    _ema_into_nb(close, slow, hist)  # hist holds the slow EMA until the end
    for i in range(close.shape[0]):
        line[i] = line[i] - hist[i]
    _ema_into_nb(line, signal, signal_line)
    for i in range(close.shape[0]):
        hist[i] = line[i] - signal_line[i]
    return line, signal_line, hist


@njit(cache=True)
def _shifted_sums_nb(x: np.ndarray, start: int, stop: int) -> tuple[float, float, float]:
    """``(shift, sum(d), sum(d * d))`` over the finite ``x[start:stop]`` with ``d = x - shift``.

    ``shift`` is the mean of those values (0 when there is none).
    """
    total = 0.0
    count = 0
    for j in range(start, stop):
        if math.isfinite(x[j]):
            total += x[j]
            count += 1
    shift = total / count if count else 0.0
    s1 = 0.0
    s2 = 0.0
    for j in range(start, stop):
        if math.isfinite(x[j]):
            d = x[j] - shift
            s1 += d
            s2 += d * d
    return shift, s1, s2


# Windows up to this length get their mean and variance directly from their own values (two
# passes over the window): with n = 2 and k = 1 a band passes exactly through a close, so only an
# arithmetic that depends on the window alone gives the same answer wherever the series starts.
BOLLINGER_DIRECT_MAX = 4


@njit(cache=True)
def bollinger_window_nb(x: np.ndarray, i: int, n: int) -> tuple[float, float]:
    """``(mean, population variance)`` of ``x[i - n + 1..i]`` from those values alone."""
    total = 0.0
    for j in range(i - n + 1, i + 1):
        total += x[j]
    mean = total / n
    squares = 0.0
    for j in range(i - n + 1, i + 1):
        d = x[j] - mean
        squares += d * d
    return mean, squares / n


@njit(cache=True)
def _bollinger_direct_into_nb(  # noqa: PLR0917 (numba: outputs are passed positionally)
    close: np.ndarray,
    n: int,
    k: float,
    middle: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_bollinger_into_nb`` for short windows: each from its own values
    (``bollinger_window_nb``)."""
    size = close.shape[0]
    middle[:] = np.nan
    upper[:] = np.nan
    lower[:] = np.nan
    last_bad = -1
    for i in range(size):
        if not math.isfinite(close[i]):
            last_bad = i
        if i >= n - 1 and last_bad <= i - n:
            mean, variance = bollinger_window_nb(close, i, n)
            width = k * math.sqrt(variance)
            middle[i] = mean
            upper[i] = mean + width
            lower[i] = mean - width
    return middle, upper, lower


# Re-centre the variance sums when the window's mean is more than sqrt(_RECENTRE) standard
# deviations from the shift: the cancellation in E[d^2] - E[d]^2 then costs at most ~1e-12.
_RECENTRE = 1e4
# Rebuild them when the compensation term exceeds this fraction of the sum of squares.
_COMP_LIMIT = 1e-6


@njit(cache=True)
def bollinger_nb(close: np.ndarray, n: int, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger Bands kernel; returns (middle, upper, lower); see ``bollinger``.

    The variance comes from compensated running sums of ``d = x - shift`` and ``d * d``: with the
    shift near the window's mean, ``E[d^2] - E[d]^2`` barely cancels (unlike with raw prices).
    The sums are rebuilt around the window's mean whenever the mean has drifted too far from the
    shift (a trend, a crash); this is rare, so the kernel stays O(len) in practice.
    """
    size = close.shape[0]
    return _bollinger_into_nb(close, n, k, np.empty(size), np.empty(size), np.empty(size))


@njit(cache=True)
def _bollinger_into_nb(  # noqa: PLR0917 (numba: outputs are passed positionally)
    close: np.ndarray,
    n: int,
    k: float,
    middle: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bollinger_nb`` writing into ``middle``, ``upper``, ``lower`` (see ``_sma_into_nb``)."""
    size = close.shape[0]
    if n <= BOLLINGER_DIRECT_MAX:
        return _bollinger_direct_into_nb(close, n, k, middle, upper, lower)
    _sma_into_nb(close, n, middle)
    upper[:] = np.nan
    lower[:] = np.nan
    shift = 0.0
    s1 = 0.0
    c1 = 0.0
    s2 = 0.0
    c2 = 0.0
    last_bad = -1
    run = 0  # length of the run of equal values ending at i: a flat window has variance 0
    for i in range(size):
        v = close[i]
        if math.isfinite(v):
            d = v - shift
            s1, err = _two_sum_nb(s1, d)
            c1 += err
            s2, err = _two_sum_nb(s2, d * d)
            c2 += err
            run = run + 1 if i > 0 and v == close[i - 1] else 1
        else:
            last_bad = i
            run = 0
        if i >= n:
            old = close[i - n]
            if math.isfinite(old):
                # The same shift as when it entered (a rebuild re-derives the sums), so the
                # same d and d * d leave exactly.
                d = old - shift
                s1, err = _two_sum_nb(s1, -d)
                c1 += err
                s2, err = _two_sum_nb(s2, -(d * d))
                c2 += err
        if i < n - 1 or last_bad > i - n:
            continue
        if run >= n:
            variance = 0.0
        else:
            offset = (s1 + c1) / n
            variance = (s2 + c2) / n - offset * offset
            # Rebuild when the shift is far from the mean, or when the compensation carries a
            # lot next to the sum (a squared spike left the window): its own rounding would show.
            if offset * offset > _RECENTRE * variance or abs(c2) > _COMP_LIMIT * s2:
                shift, s1, s2 = _shifted_sums_nb(close, i - n + 1, i + 1)
                c1 = 0.0
                c2 = 0.0
                offset = s1 / n
                variance = s2 / n - offset * offset
            variance = max(variance, 0.0)
        width = k * math.sqrt(variance)
        upper[i] = middle[i] + width
        lower[i] = middle[i] - width
    return middle, upper, lower


@njit(cache=True)
def atr_nb(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    """Average True Range kernel; see ``atr``."""
    size = close.shape[0]
    out = np.full(size, np.nan)
    have_prev = False
    prev_close = 0.0
    count = 0
    value = 0.0
    for i in range(size):
        h = high[i]
        lo = low[i]
        c = close[i]
        if not (math.isfinite(h) and math.isfinite(lo) and math.isfinite(c)):
            have_prev = False
            continue
        true_range = h - lo
        if have_prev:
            true_range = max(true_range, abs(h - prev_close), abs(lo - prev_close))
        else:
            have_prev = True
            count = 0
            value = 0.0
        prev_close = c
        if count < n:
            value += true_range  # a plain sum until the seed is complete
            count += 1
            if count < n:
                continue
            value /= n
        else:
            value = (value * (n - 1) + true_range) / n
        out[i] = value
    return out


@njit(cache=True)
def stochastic_nb(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, k: int, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic oscillator kernel; returns (k_line, d_line); see ``stochastic``."""
    size = close.shape[0]
    highest = _rolling_max_nb(high, k)
    lowest = _rolling_min_nb(low, k)
    k_line = np.full(size, np.nan)
    for i in range(size):
        c = close[i]
        hh = highest[i]
        ll = lowest[i]
        if math.isfinite(c) and not math.isnan(hh) and not math.isnan(ll):
            span = hh - ll
            k_line[i] = 50.0 if span == 0.0 else 100.0 * (c - ll) / span
    return k_line, sma_nb(k_line, d)


@njit(cache=True)
def donchian_nb(
    high: np.ndarray, low: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Donchian channel kernel; returns (upper, lower, middle); see ``donchian``."""
    size = high.shape[0]
    return _donchian_into_nb(high, low, n, np.empty(size), np.empty(size), np.empty(size))


@njit(cache=True)
def _donchian_into_nb(  # noqa: PLR0917 (numba: outputs are passed positionally)
    high: np.ndarray,
    low: np.ndarray,
    n: int,
    upper: np.ndarray,
    lower: np.ndarray,
    middle: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``donchian_nb`` writing into the three outputs (see ``_sma_into_nb``)."""
    _rolling_extreme_into_nb(high, n, 1.0, upper, middle)  # middle is scratch until the end
    _rolling_extreme_into_nb(low, n, -1.0, lower, middle)
    for i in range(high.shape[0]):
        middle[i] = (upper[i] + lower[i]) / 2.0
    return upper, lower, middle


@njit(cache=True)
def vwap_nb(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, n: int
) -> np.ndarray:
    """Rolling VWAP kernel; see ``vwap``."""
    size = close.shape[0]
    out = np.full(size, np.nan)
    # Per bar: price * volume and volume, both NaN when the bar is missing.
    pv = np.empty(size)
    vol = np.empty(size)
    for i in range(size):
        v = volume[i]
        typical = (high[i] + low[i] + close[i]) / 3.0
        product = typical * v
        if math.isfinite(typical) and math.isfinite(v) and math.isfinite(product):
            pv[i] = product
            vol[i] = v
        else:
            pv[i] = np.nan
            vol[i] = np.nan
    pv_sum = 0.0
    pv_comp = 0.0
    vol_sum = 0.0
    vol_comp = 0.0
    traded = 0  # bars with non-zero volume in the window: decides "no volume" exactly
    last_bad = -1
    for i in range(size):
        if math.isnan(vol[i]):
            last_bad = i
        else:
            pv_sum, err = _two_sum_nb(pv_sum, pv[i])
            pv_comp += err
            vol_sum, err = _two_sum_nb(vol_sum, vol[i])
            vol_comp += err
            traded += vol[i] != 0.0
        if i >= n:
            j = i - n
            if not math.isnan(vol[j]):
                pv_sum, err = _two_sum_nb(pv_sum, -pv[j])
                pv_comp += err
                vol_sum, err = _two_sum_nb(vol_sum, -vol[j])
                vol_comp += err
                traded -= vol[j] != 0.0
        if i >= n - 1 and last_bad <= i - n and traded > 0:
            out[i] = (pv_sum + pv_comp) / (vol_sum + vol_comp)
    return out


@njit(cache=True)
def obv_nb(close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """On-balance volume kernel; see ``obv``."""
    size = close.shape[0]
    out = np.full(size, np.nan)
    have_prev = False
    prev = 0.0
    total = 0.0
    for i in range(size):
        c = close[i]
        v = volume[i]
        if not (math.isfinite(c) and math.isfinite(v)):
            have_prev = False
            continue
        if not have_prev:
            have_prev = True
            total = 0.0
        elif c > prev:
            total += v
        elif c < prev:
            total -= v
        prev = c
        out[i] = total
    return out


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_series(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "O":  # e.g. a list mixing ints and floats, or Decimals
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must hold numbers, got {exc}") from None
    elif arr.dtype.kind not in "biuf":  # strings, datetimes, complex: never silently cast
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _as_columns(**columns: ArrayLike) -> list[np.ndarray]:
    """The named inputs as float64 arrays; ValueError unless all have the first one's length."""
    arrays = [_as_series(values, name) for name, values in columns.items()]
    names = list(columns)
    size = arrays[0].shape[0]
    for name, arr in zip(names[1:], arrays[1:], strict=True):
        if arr.shape[0] != size:
            raise ValueError(
                f"{', '.join(names)} must have equal lengths: {name} has {arr.shape[0]} values "
                f"but {names[0]} has {size}"
            )
    return arrays


def _period(value: int, name: str) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        period = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})"
        ) from None
    if period < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {period}")
    return period


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def sma(x: ArrayLike, n: int) -> np.ndarray:
    """Simple moving average: the mean of the last ``n`` values, the current one included.

    Inputs: ``x`` 1-D numbers, ``n`` int >= 1. Returns float64 of ``len(x)``.
    Warm-up: the first ``n - 1`` outputs are NaN (first value at index ``n - 1``).
    NaN: an output whose window holds a missing value (NaN/inf) is NaN.
    Raises ``ValueError`` for a non-1-D or non-numeric ``x`` or a bad ``n``.
    """
    arr = _as_series(x, "x")
    return _sma_into_nb(arr, _period(n, "n"), np.empty(arr.shape[0]))


def ema(x: ArrayLike, n: int) -> np.ndarray:
    """Exponential moving average with ``alpha = 2 / (n + 1)``, seeded with an SMA.

    Inputs: ``x`` 1-D numbers, ``n`` int >= 1. Returns float64 of ``len(x)``. The first value is
    the mean of the first ``n`` values (at index ``n - 1``); then
    ``ema[i] = ema[i-1] + alpha * (x[i] - ema[i-1])`` (TA-Lib's default seeding).
    Warm-up: the first ``n - 1`` outputs are NaN.
    NaN: a missing value gives NaN and restarts the average: it is seeded again on the next
    ``n`` valid values (leading NaNs are skipped the same way).
    Raises ``ValueError`` for a non-1-D or non-numeric ``x`` or a bad ``n``.
    """
    arr = _as_series(x, "x")
    return _ema_into_nb(arr, _period(n, "n"), np.empty(arr.shape[0]))


def wma(x: ArrayLike, n: int) -> np.ndarray:
    """Linearly weighted moving average over the last ``n`` values.

    Inputs: ``x`` 1-D numbers, ``n`` int >= 1. Returns float64 of ``len(x)``: weights are
    ``1..n`` from the oldest to the current value, divided by ``n * (n + 1) / 2``.
    Warm-up: the first ``n - 1`` outputs are NaN.
    NaN: an output whose window holds a missing value (NaN/inf) is NaN.
    Raises ``ValueError`` for a non-1-D or non-numeric ``x`` or a bad ``n``.
    """
    return wma_nb(_as_series(x, "x"), _period(n, "n"))


def rsi(close: ArrayLike, n: int = 14) -> np.ndarray:
    """Wilder's Relative Strength Index, 0..100.

    Inputs: ``close`` 1-D prices, ``n`` int >= 1. Returns float64 of ``len(close)``. Average gain
    and loss are seeded with the plain means of the first ``n`` changes, then smoothed with
    Wilder's ``avg = (avg * (n - 1) + x) / n``; ``rsi = 100 * gain / (gain + loss)``. Only gains
    gives 100, only losses 0, and no change at all (both averages 0) gives 50.
    Warm-up: the first ``n`` outputs are NaN (``n`` changes need ``n + 1`` prices; first value at
    index ``n``).
    NaN: a missing close gives NaN and restarts the indicator at the next valid close (which has
    no change yet), so the next ``n`` outputs after it are NaN too.
    Raises ``ValueError`` for a non-1-D or non-numeric ``close`` or a bad ``n``.
    """
    arr = _as_series(close, "close")
    return _rsi_into_nb(arr, _period(n, "n"), np.empty(arr.shape[0]))


def macd(close: ArrayLike, fast: int = 12, slow: int = 26, signal: int = 9) -> Macd:
    """Moving Average Convergence/Divergence: ``Macd(line, signal_line, hist)``.

    Inputs: ``close`` 1-D prices, ``fast``/``slow``/``signal`` ints >= 1. ``line = ema(close,
    fast) - ema(close, slow)``; ``signal_line = ema(line, signal)``, seeded with the mean of the
    first ``signal`` valid line values; ``hist = line - signal_line``. ``fast >= slow`` is
    allowed (the line is then the negative of the usual one).
    Warm-up: ``line`` has ``max(fast, slow) - 1`` leading NaNs; ``signal_line`` and ``hist`` have
    ``max(fast, slow) + signal - 2``.
    NaN: a missing close restarts both EMAs (see ``ema``) and so the signal line.
    Raises ``ValueError`` for a non-1-D or non-numeric ``close`` or a bad period.
    """
    arr = _as_series(close, "close")
    periods = _period(fast, "fast"), _period(slow, "slow"), _period(signal, "signal")
    size = arr.shape[0]
    return Macd(*_macd_into_nb(arr, *periods, np.empty(size), np.empty(size), np.empty(size)))


def bollinger(close: ArrayLike, n: int = 20, k: float = 2.0) -> BollingerBands:
    """Bollinger Bands: ``BollingerBands(middle, upper, lower)``.

    Inputs: ``close`` 1-D prices, ``n`` int >= 1, ``k`` finite float >= 0. ``middle = sma(close,
    n)``; ``upper``/``lower = middle +- k * std`` with the population standard deviation
    (``ddof=0``, like TA-Lib) of the same window. A window of equal values has exactly zero
    width.
    Warm-up: the first ``n - 1`` outputs of each band are NaN.
    NaN: an output whose window holds a missing value (NaN/inf) is NaN.
    Raises ``ValueError`` for a non-1-D or non-numeric ``close``, a bad ``n`` or ``k``.
    """
    arr = _as_series(close, "close")
    period = _period(n, "n")
    if isinstance(k, bool | np.bool_) or not isinstance(k, int | float | np.integer | np.floating):
        raise ValueError(f"k must be a number >= 0, got {k!r}")
    width = float(k)
    if not (math.isfinite(width) and width >= 0.0):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    size = arr.shape[0]
    return BollingerBands(
        *_bollinger_into_nb(arr, period, width, np.empty(size), np.empty(size), np.empty(size))
    )


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, n: int = 14) -> np.ndarray:
    """Average True Range (Wilder).

    Inputs: ``high``, ``low``, ``close`` 1-D prices of equal length, ``n`` int >= 1. The true
    range of bar 0 is ``high - low``; later ones are ``max(high - low, |high - prev_close|,
    |low - prev_close|)``. The first ATR is the mean of the first ``n`` true ranges, then
    ``atr = (atr * (n - 1) + tr) / n``. (TA-Lib drops bar 0's true range and starts one bar
    later.)
    Warm-up: the first ``n - 1`` outputs are NaN (first value at index ``n - 1``).
    NaN: a bar with a missing high, low or close gives NaN and restarts the indicator at the next
    valid bar (whose true range is again ``high - low``).
    Raises ``ValueError`` for unequal lengths, non-1-D or non-numeric inputs or a bad ``n``.
    """
    h, lo, c = _as_columns(high=high, low=low, close=close)
    return atr_nb(h, lo, c, _period(n, "n"))


def stochastic(
    high: ArrayLike, low: ArrayLike, close: ArrayLike, k: int = 14, d: int = 3
) -> Stochastic:
    """Stochastic oscillator: ``Stochastic(k_line, d_line)``, 0..100 for consistent candles.

    Inputs: ``high``, ``low``, ``close`` 1-D prices of equal length, ``k`` and ``d`` ints >= 1.
    ``%K = 100 * (close - LL) / (HH - LL)`` with HH/LL the highest high / lowest low of the last
    ``k`` bars (current included); a flat range (``HH == LL``) gives 50. ``%D = sma(%K, d)``.
    Not clipped: a close outside its bars' range gives a value outside 0..100.
    Warm-up: ``k_line`` has ``k - 1`` leading NaNs, ``d_line`` has ``k + d - 2``.
    NaN: a %K window holding a missing high or low, or a missing current close, gives NaN; a %D
    window holding a NaN %K gives NaN.
    Raises ``ValueError`` for unequal lengths, non-1-D or non-numeric inputs or a bad period.
    """
    h, lo, c = _as_columns(high=high, low=low, close=close)
    return Stochastic(*stochastic_nb(h, lo, c, _period(k, "k"), _period(d, "d")))


def donchian(high: ArrayLike, low: ArrayLike, n: int = 20) -> DonchianChannel:
    """Donchian channel: ``DonchianChannel(upper, lower, middle)``.

    Inputs: ``high``, ``low`` 1-D prices of equal length, ``n`` int >= 1. ``upper`` is the highest
    high and ``lower`` the lowest low of the last ``n`` bars INCLUDING the current bar, so
    ``close[i] > upper[i]`` can never hold: a breakout rule compares ``close[i]`` with the
    previous bar's channel, ``upper[i - 1]``. ``middle = (upper + lower) / 2``.
    Warm-up: the first ``n - 1`` outputs are NaN.
    NaN: ``upper`` is NaN when its window holds a missing high, ``lower`` when it holds a missing
    low, ``middle`` when either is NaN.
    Raises ``ValueError`` for unequal lengths, non-1-D or non-numeric inputs or a bad ``n``.
    """
    h, lo = _as_columns(high=high, low=low)
    size = h.shape[0]
    return DonchianChannel(
        *_donchian_into_nb(h, lo, _period(n, "n"), np.empty(size), np.empty(size), np.empty(size))
    )


def vwap(
    high: ArrayLike, low: ArrayLike, close: ArrayLike, volume: ArrayLike, n: int
) -> np.ndarray:
    """Rolling volume-weighted average price over the last ``n`` bars.

    Inputs: ``high``, ``low``, ``close`` prices and ``volume`` (>= 0, not checked), 1-D of equal
    length, ``n`` int >= 1. ``vwap = sum(tp * volume) / sum(volume)`` over the window, with the
    typical price ``tp = (high + low + close) / 3``. A window without volume gives NaN.
    Warm-up: the first ``n - 1`` outputs are NaN.
    NaN: an output whose window holds a bar with a missing high, low, close or volume is NaN.
    Raises ``ValueError`` for unequal lengths, non-1-D or non-numeric inputs or a bad ``n``.
    """
    h, lo, c, v = _as_columns(high=high, low=low, close=close, volume=volume)
    return vwap_nb(h, lo, c, v, _period(n, "n"))


def obv(close: ArrayLike, volume: ArrayLike) -> np.ndarray:
    """On-balance volume: a running total of volume signed by the close's direction.

    Inputs: ``close`` and ``volume`` 1-D of equal length. ``obv[0] = 0``; then ``obv[i] =
    obv[i-1] + volume[i]`` if the close rose, ``- volume[i]`` if it fell, unchanged if equal.
    Warm-up: none (bar 0 is 0).
    NaN: a bar with a missing close or volume gives NaN and restarts the total at 0 on the next
    valid bar.
    Raises ``ValueError`` for unequal lengths or non-1-D or non-numeric inputs.
    """
    c, v = _as_columns(close=close, volume=volume)
    return obv_nb(c, v)
