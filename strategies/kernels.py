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

import numpy as np
from numba import njit

__all__ = [
    "band_reentry_signals_nb",
    "breakout_signals_nb",
    "count_invalid_signals_nb",
    "cross_signals_nb",
    "first_non_finite_nb",
    "first_not_increasing_nb",
    "level_reentry_signals_nb",
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


@njit(cache=True)
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


@njit(cache=True)
def count_invalid_signals_nb(signals: np.ndarray) -> int:
    """Number of values outside ``{-1, 0, 1}`` in an integer signal array."""
    bad = 0
    for i in range(signals.shape[0]):
        bad += (signals[i] < -1) | (signals[i] > 1)
    return bad
