"""Ticks -> right-aligned OHLCV candles (pure: numpy and numba only, never Django).

Candle convention (the user's contract)
---------------------------------------
A candle's timestamp is its **close** time. The 5m candle stamped 09:05:00 holds the ticks with
time in (09:00:00, 09:05:00]: a tick at exactly 09:05:00.000 belongs to it, a tick at 09:00:00.000
belongs to the 09:00 candle. This equals pandas ``resample(closed="right", label="right")``.
Intervals are aligned to the Unix epoch in UTC (1d candles close at 00:00 UTC). The close time of
a tick at ``t`` ms with an interval of ``I`` ms is ``ceil(t / I) * I``: a tick exactly on a
boundary maps to that boundary. Intervals without ticks produce no candle (no forward fill).

Candles carry ``timestamp`` (close time, int64 epoch ms), ``open``/``high``/``low``/``close``
(float64: first, max, min and last price), ``volume`` (float64 sum, added in tick order) and
``trades`` (int64 number of ticks).

Input rules
-----------
- Times are int64 epoch milliseconds (UTC). Float timestamps are refused rather than truncated.
- Batch inputs (``aggregate_to_timeframe``, ``aggregate_arrays``, ``aggregate_all``,
  ``resample_candles``) must be sorted ascending; equal timestamps are fine and keep their order
  (the first of them can be the open, the last the close). Unsorted input is rejected with
  ``ValueError``; sort with ``np.argsort(ts_ms, kind="stable")`` first.
- ``price`` and ``volume`` must have the length of ``ts_ms`` (``ValueError`` otherwise).
- NaN prices or volumes are the caller's problem (the collector rejects them): they are not
  checked here (that would cost a pass over the data); a candle holding one has an unspecified
  high and low, and a NaN open, close or volume where the NaN lands there.
- Empty input gives empty arrays (or no candles).

``CandleBuilder`` is the streaming form for live collection; it folds ticks one at a time (``add``)
or a batch at a time (``add_many``, a numba kernel) and is the single implementation behind
``aggregate_to_timeframe``. All forms produce identical candles for the same sorted ticks.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from numba import njit

__all__ = [
    "CANDLE_FIELDS",
    "TIMEFRAMES",
    "CandleBuilder",
    "aggregate_all",
    "aggregate_arrays",
    "aggregate_nb",
    "aggregate_to_timeframe",
    "builder_fold_nb",
    "parse_timeframe",
    "resample_candles",
    "resample_candles_nb",
]

TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")

CANDLE_FIELDS: tuple[str, ...] = (
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trades",
)

_TIMEFRAME_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3_600,
    "4h": 14_400,
    "1d": 86_400,
}

_UNSORTED_HINT = "unsorted input is rejected; sort with np.argsort(kind='stable') first"

# Slots of CandleBuilder's numba state arrays (see builder_fold_nb).
_S_HAS_CURRENT, _S_CLOSE_MS, _S_TRADES, _S_HAS_LAST, _S_LAST_CLOSED_MS = range(5)
_F_OPEN, _F_HIGH, _F_LOW, _F_CLOSE, _F_VOLUME = range(5)


def parse_timeframe(timeframe: str) -> int:
    """Return the length of ``timeframe`` in seconds ("5m" -> 300).

    Only the six names of ``TIMEFRAMES`` are accepted; anything else raises ``ValueError`` naming
    the bad value and the allowed ones.
    """
    seconds = _TIMEFRAME_SECONDS.get(timeframe) if isinstance(timeframe, str) else None
    if seconds is None:
        raise ValueError(
            f"unknown timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}"
        )
    return seconds


def _interval_ms(timeframe: str) -> int:
    return parse_timeframe(timeframe) * 1_000


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _count_descents_nb(ts: np.ndarray) -> int:
    """Number of elements smaller than their predecessor (0 when sorted ascending).

    No early exit on purpose: the branch-free loop vectorises and runs several times faster
    than a search for the first descent on sorted data, the case that matters.
    """
    count = 0
    for i in range(1, ts.shape[0]):
        count += ts[i] < ts[i - 1]
    return count


@njit(cache=True)
def _ceil_to_nb(t: int, interval_ms: int) -> int:
    q = t // interval_ms
    if q * interval_ms < t:
        q += 1
    return q * interval_ms


# The kernels are one flat loop with the candle in scalar locals, which is what makes them fast.
@njit(cache=True)
def aggregate_nb(  # noqa: PLR0915
    ts_ms: np.ndarray, price: np.ndarray, volume: np.ndarray, interval_ms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold sorted ticks into right-aligned candles of ``interval_ms`` in one pass.

    Inputs: ``ts_ms`` int64 epoch ms sorted ascending (duplicates allowed), ``price`` and
    ``volume`` float64 of the same length, ``interval_ms`` > 0. Returns seven arrays
    ``(timestamp int64 close ms, open, high, low, close, volume float64, trades int64)``, one
    element per non-empty interval, in time order. Volume is summed in tick order. NaN inputs
    are not checked. Raises ``ValueError`` on a descending timestamp (checked in the loop, so a
    direct call with unsorted data cannot write past the output arrays).
    """
    n = ts_ms.shape[0]
    if n == 0:
        cap = 0
    else:
        if ts_ms[n - 1] < ts_ms[0]:
            raise ValueError("ts_ms must be sorted ascending")
        span = (_ceil_to_nb(ts_ms[n - 1], interval_ms) - _ceil_to_nb(ts_ms[0], interval_ms)) // (
            interval_ms
        ) + 1
        cap = min(n, span)
    out_ts = np.empty(cap, dtype=np.int64)
    out_o = np.empty(cap, dtype=np.float64)
    out_h = np.empty(cap, dtype=np.float64)
    out_l = np.empty(cap, dtype=np.float64)
    out_c = np.empty(cap, dtype=np.float64)
    out_v = np.empty(cap, dtype=np.float64)
    out_n = np.empty(cap, dtype=np.int64)
    if n == 0:
        return out_ts, out_o, out_h, out_l, out_c, out_v, out_n

    k = 0
    cur = _ceil_to_nb(ts_ms[0], interval_ms)
    o = price[0]
    h = o
    lo = o
    c = o
    v = volume[0]
    cnt = 1
    prev = ts_ms[0]
    for i in range(1, n):
        t = ts_ms[i]
        if t < prev:
            raise ValueError("ts_ms must be sorted ascending")
        prev = t
        p = price[i]
        # Sorted input: t > cur - interval already holds, so t <= cur means "same candle".
        if t <= cur:
            if p > h:
                h = p
            elif p < lo:
                lo = p
            c = p
            v += volume[i]
            cnt += 1
        else:
            if k + 1 >= cap:  # unreachable for sorted input; guards the writes below
                raise ValueError("ts_ms must be sorted ascending")
            out_ts[k] = cur
            out_o[k] = o
            out_h[k] = h
            out_l[k] = lo
            out_c[k] = c
            out_v[k] = v
            out_n[k] = cnt
            k += 1
            cur = _ceil_to_nb(t, interval_ms)
            o = p
            h = p
            lo = p
            c = p
            v = volume[i]
            cnt = 1
    out_ts[k] = cur
    out_o[k] = o
    out_h[k] = h
    out_l[k] = lo
    out_c[k] = c
    out_v[k] = v
    out_n[k] = cnt
    k += 1
    return (
        out_ts[:k].copy(),
        out_o[:k].copy(),
        out_h[:k].copy(),
        out_l[:k].copy(),
        out_c[:k].copy(),
        out_v[:k].copy(),
        out_n[:k].copy(),
    )


# Numba kernels take plain positional arrays (no keyword-only arguments in nopython mode).
@njit(cache=True)
def resample_candles_nb(  # noqa: PLR0915, PLR0917
    ts_ms: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    trades: np.ndarray,
    interval_ms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge right-aligned candles into right-aligned candles of ``interval_ms``.

    Inputs: candle close times ``ts_ms`` int64 epoch ms sorted ascending, ``open_``/``high``/
    ``low``/``close``/``volume`` float64 and ``trades`` int64 of the same length. The candle
    closing at ``c`` goes to the higher candle closing at ``ceil(c / interval_ms) * interval_ms``;
    open is the first open, high the max, low the min, close the last close, volume and trades
    the sums (volume added in candle order). Exact only when the source interval divides
    ``interval_ms``. Returns the same seven arrays as ``aggregate_nb``. Raises ``ValueError`` on
    a descending timestamp.
    """
    n = ts_ms.shape[0]
    if n == 0:
        cap = 0
    else:
        if ts_ms[n - 1] < ts_ms[0]:
            raise ValueError("ts_ms must be sorted ascending")
        span = (_ceil_to_nb(ts_ms[n - 1], interval_ms) - _ceil_to_nb(ts_ms[0], interval_ms)) // (
            interval_ms
        ) + 1
        cap = min(n, span)
    out_ts = np.empty(cap, dtype=np.int64)
    out_o = np.empty(cap, dtype=np.float64)
    out_h = np.empty(cap, dtype=np.float64)
    out_l = np.empty(cap, dtype=np.float64)
    out_c = np.empty(cap, dtype=np.float64)
    out_v = np.empty(cap, dtype=np.float64)
    out_n = np.empty(cap, dtype=np.int64)
    if n == 0:
        return out_ts, out_o, out_h, out_l, out_c, out_v, out_n

    k = 0
    cur = _ceil_to_nb(ts_ms[0], interval_ms)
    o = open_[0]
    h = high[0]
    lo = low[0]
    c = close[0]
    v = volume[0]
    cnt = trades[0]
    prev = ts_ms[0]
    for i in range(1, n):
        t = ts_ms[i]
        if t < prev:
            raise ValueError("ts_ms must be sorted ascending")
        prev = t
        if t <= cur:
            h = max(h, high[i])
            lo = min(lo, low[i])
            c = close[i]
            v += volume[i]
            cnt += trades[i]
        else:
            if k + 1 >= cap:  # unreachable for sorted input; guards the writes below
                raise ValueError("ts_ms must be sorted ascending")
            out_ts[k] = cur
            out_o[k] = o
            out_h[k] = h
            out_l[k] = lo
            out_c[k] = c
            out_v[k] = v
            out_n[k] = cnt
            k += 1
            cur = _ceil_to_nb(t, interval_ms)
            o = open_[i]
            h = high[i]
            lo = low[i]
            c = close[i]
            v = volume[i]
            cnt = trades[i]
    out_ts[k] = cur
    out_o[k] = o
    out_h[k] = h
    out_l[k] = lo
    out_c[k] = c
    out_v[k] = v
    out_n[k] = cnt
    k += 1
    return (
        out_ts[:k].copy(),
        out_o[:k].copy(),
        out_h[:k].copy(),
        out_l[:k].copy(),
        out_c[:k].copy(),
        out_v[:k].copy(),
        out_n[:k].copy(),
    )


# Same shape as the two above: one flat loop, positional arrays.
@njit(cache=True)
def builder_fold_nb(  # noqa: PLR0915, PLR0917
    ts_ms: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    interval_ms: int,
    state_i: np.ndarray,
    state_f: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold a batch of ticks into a streaming builder's state; return the candles it closed.

    ``state_i`` int64[5] = (has_current 0/1, current close ms, current trades, has_last_closed
    0/1, last closed close ms); ``state_f`` float64[5] = (open, high, low, close, volume) of the
    current candle. Ticks are folded in arrival order, one at a time, exactly like
    ``CandleBuilder.add``: a tick whose close time is later than the current candle's closes it.
    A late tick (close time before the current candle's, or not after the last closed candle's
    when there is no current one) raises ``ValueError`` and leaves the state untouched: the batch
    is rejected whole. The state is written back only on success. Returns the closed candles as
    the seven arrays of ``aggregate_nb``.
    """
    n = ts_ms.shape[0]
    out_ts = np.empty(n, dtype=np.int64)
    out_o = np.empty(n, dtype=np.float64)
    out_h = np.empty(n, dtype=np.float64)
    out_l = np.empty(n, dtype=np.float64)
    out_c = np.empty(n, dtype=np.float64)
    out_v = np.empty(n, dtype=np.float64)
    out_n = np.empty(n, dtype=np.int64)

    has_cur = state_i[0] != 0
    cur = state_i[1]
    cnt = state_i[2]
    has_last = state_i[3] != 0
    last = state_i[4]
    o = state_f[0]
    h = state_f[1]
    lo = state_f[2]
    c = state_f[3]
    v = state_f[4]
    k = 0
    for i in range(n):
        t = ts_ms[i]
        p = price[i]
        if has_cur and t <= cur:
            if t <= cur - interval_ms:
                raise ValueError("late tick: its candle is older than the current one")
            if p > h:
                h = p
            elif p < lo:
                lo = p
            c = p
            v += volume[i]
            cnt += 1
            continue
        close_t = _ceil_to_nb(t, interval_ms)
        if has_cur:
            out_ts[k] = cur
            out_o[k] = o
            out_h[k] = h
            out_l[k] = lo
            out_c[k] = c
            out_v[k] = v
            out_n[k] = cnt
            k += 1
            has_last = True
            last = cur
        elif has_last and close_t <= last:
            raise ValueError("late tick: its candle is already closed")
        has_cur = True
        cur = close_t
        o = p
        h = p
        lo = p
        c = p
        v = volume[i]
        cnt = 1

    state_i[0] = 1 if has_cur else 0
    state_i[1] = cur
    state_i[2] = cnt
    state_i[3] = 1 if has_last else 0
    state_i[4] = last
    state_f[0] = o
    state_f[1] = h
    state_f[2] = lo
    state_f[3] = c
    state_f[4] = v
    return out_ts[:k], out_o[:k], out_h[:k], out_l[:k], out_c[:k], out_v[:k], out_n[:k]


# ---------------------------------------------------------------------------------------------
# Array API
# ---------------------------------------------------------------------------------------------


def _as_ts_array(ts_ms: np.ndarray | Sequence[int], name: str = "ts_ms") -> np.ndarray:
    arr = np.asarray(ts_ms)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        # Float timestamps would be truncated silently and could move a tick across a boundary.
        raise TypeError(f"{name} must hold integer epoch milliseconds, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_float_array(values: np.ndarray | Sequence[float], name: str, n: int) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values but ts_ms has {n}")
    return arr


def _check_sorted(ts: np.ndarray, name: str = "ts_ms") -> None:
    if ts.shape[0] > 1 and _count_descents_nb(ts):
        i = int(np.flatnonzero(ts[1:] < ts[:-1])[0]) + 1
        raise ValueError(
            f"{name} must be sorted ascending: {name}[{i}]={ts[i]} < {name}[{i - 1}]={ts[i - 1]} "
            f"({_UNSORTED_HINT})"
        )


def _as_candle_dict(arrays: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    return dict(zip(CANDLE_FIELDS, arrays, strict=True))


def _prepare_ticks(
    ts_ms: np.ndarray | Sequence[int],
    price: np.ndarray | Sequence[float],
    volume: np.ndarray | Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = _as_ts_array(ts_ms)
    n = ts.shape[0]
    return ts, _as_float_array(price, "price", n), _as_float_array(volume, "volume", n)


def aggregate_arrays(
    ts_ms: np.ndarray, price: np.ndarray, volume: np.ndarray, timeframe: str
) -> dict[str, np.ndarray]:
    """Aggregate tick arrays into right-aligned candles of one timeframe.

    ``ts_ms`` is int64 epoch ms sorted ascending (duplicates allowed), ``price`` and ``volume``
    are float64 of the same length. Returns ``{"timestamp": int64 close ms, "open", "high",
    "low", "close", "volume": float64, "trades": int64}``, one row per non-empty interval.
    Raises ``ValueError`` for an unknown timeframe, unequal lengths or unsorted input (sort with
    ``np.argsort(kind='stable')`` first) and ``TypeError`` for non-integer timestamps.
    """
    interval = _interval_ms(timeframe)
    ts, px, vol = _prepare_ticks(ts_ms, price, volume)
    _check_sorted(ts)
    return _as_candle_dict(aggregate_nb(ts, px, vol, interval))


def _prepare_candles(candles: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    missing = [f for f in CANDLE_FIELDS if f not in candles]
    if missing:
        raise ValueError(f"candles lack the field(s) {', '.join(missing)}")
    ts = _as_ts_array(candles["timestamp"], "timestamp")
    n = ts.shape[0]
    floats = tuple(
        _as_float_array(candles[f], f, n) for f in ("open", "high", "low", "close", "volume")
    )
    trades = np.asarray(candles["trades"])
    if trades.shape != (n,):
        raise ValueError(f"trades has shape {trades.shape} but timestamp has {n} values")
    trades = np.ascontiguousarray(trades, dtype=np.int64)
    _check_sorted(ts, "timestamp")
    return (ts, *floats, trades)


def resample_candles(
    candles: dict[str, np.ndarray], timeframe: str, *, source_timeframe: str | None = None
) -> dict[str, np.ndarray]:
    """Merge right-aligned candles (e.g. stored 1m) into candles of a higher ``timeframe``.

    ``candles`` holds the arrays of ``CANDLE_FIELDS`` (timestamp int64 close ms sorted
    ascending). The candle closing at ``c`` goes to the one closing at ``ceil(c / I) * I``:
    open = first open, high = max, low = min, close = last close, volume and trades = sums.
    The result equals aggregating the original ticks directly (volume up to float rounding)
    only when the source interval divides the target; pass ``source_timeframe`` to have that
    checked (``ValueError`` otherwise). Raises ``ValueError`` for missing fields, unequal lengths
    or unsorted timestamps.
    """
    interval = _interval_ms(timeframe)
    if source_timeframe is not None:
        source = _interval_ms(source_timeframe)
        if interval % source:
            raise ValueError(
                f"cannot build {timeframe} candles from {source_timeframe} candles: "
                f"{timeframe} is not a whole multiple of {source_timeframe}"
            )
    return _as_candle_dict(resample_candles_nb(*_prepare_candles(candles), interval))


def aggregate_all(
    ts_ms: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    timeframes: Iterable[str] = TIMEFRAMES,
) -> dict[str, dict[str, np.ndarray]]:
    """Aggregate tick arrays into several timeframes at once; result keyed by timeframe name.

    The smallest requested timeframe is built from the ticks with ``aggregate_nb``; every higher
    one from the candles of the largest smaller timeframe that divides it, with
    ``resample_candles_nb`` (all of ``TIMEFRAMES`` divide each larger one). Candles equal
    ``aggregate_arrays`` for each timeframe exactly, except volume, which is summed per candle
    first and so may differ by float rounding. Input rules and errors as ``aggregate_arrays``.
    """
    names = list(dict.fromkeys(timeframes))
    intervals = {name: _interval_ms(name) for name in names}
    ts, px, vol = _prepare_ticks(ts_ms, price, volume)
    _check_sorted(ts)
    result: dict[str, dict[str, np.ndarray]] = {}
    built: list[tuple[int, tuple[np.ndarray, ...]]] = []
    for name in sorted(names, key=intervals.__getitem__):
        interval = intervals[name]
        source = next((arrs for iv, arrs in reversed(built) if interval % iv == 0), None)
        if source is None:
            arrays = aggregate_nb(ts, px, vol, interval)
        else:
            arrays = resample_candles_nb(*source, interval)
        built.append((interval, arrays))
        result[name] = _as_candle_dict(arrays)
    return {name: result[name] for name in names}


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


class CandleBuilder:
    """Streaming, incremental right-aligned candle builder for one timeframe (live collection).

    ``add`` folds one tick and returns the candles that tick closed (``[]`` or one candle);
    ``add_many`` does the same for an array batch through ``builder_fold_nb``; ``flush(now_ms)``
    closes the current candle once its close time has passed with no trade after it. Ticks fold
    in arrival order; equal timestamps are fine. A tick whose candle is older than the current
    one (or already closed) is late and raises ``ValueError`` without changing the builder.
    Closed candles are dicts with the fields of ``CANDLE_FIELDS`` (Python int/float values).
    """

    __slots__ = (
        "_close",
        "_close_ms",
        "_high",
        "_interval_ms",
        "_last_closed_ms",
        "_low",
        "_open",
        "_trades",
        "_volume",
        "timeframe",
    )

    def __init__(self, timeframe: str, *, last_closed_ms: int | None = None) -> None:
        """A builder with no candle in progress.

        ``last_closed_ms`` resumes after a restart: the close time of the last candle already
        final (e.g. stored), so ticks belonging to it or earlier ones are rejected as late.
        """
        self.timeframe = timeframe
        self._interval_ms = _interval_ms(timeframe)
        self._close_ms: int | None = None
        self._last_closed_ms = None if last_closed_ms is None else operator.index(last_closed_ms)
        self._open = self._high = self._low = self._close = self._volume = 0.0
        self._trades = 0

    @property
    def interval_ms(self) -> int:
        """Length of one candle in milliseconds."""
        return self._interval_ms

    @property
    def current(self) -> dict | None:
        """A copy of the in-progress candle (stamped with its future close time), or None."""
        if self._close_ms is None:
            return None
        return self._current_candle()

    @property
    def last_closed_ms(self) -> int | None:
        """Close time of the most recently closed candle, or None before the first one."""
        return self._last_closed_ms

    def _current_candle(self) -> dict:
        return {
            "timestamp": self._close_ms,
            "open": self._open,
            "high": self._high,
            "low": self._low,
            "close": self._close,
            "volume": self._volume,
            "trades": self._trades,
        }

    def _start(self, close_ms: int, price: float, volume: float) -> None:
        self._close_ms = close_ms
        self._open = self._high = self._low = self._close = price
        self._volume = volume
        self._trades = 1

    def add(self, ts_ms: int, price: float, volume: float) -> list[dict]:
        """Fold one tick (epoch ms, price, volume); return the candles it closed.

        Returns ``[]`` while the tick falls in the current candle, or ``[closed]`` when its close
        time is later than the current candle's. Raises ``ValueError`` for a late tick (its
        candle closes before the current one, or was already closed by ``flush``) and
        ``TypeError`` for a non-integer timestamp.
        """
        interval = self._interval_ms
        close_ms = -(-operator.index(ts_ms) // interval) * interval
        price = float(price)
        volume = float(volume)
        current = self._close_ms
        if close_ms == current:
            if price > self._high:
                self._high = price
            elif price < self._low:
                self._low = price
            self._close = price
            self._volume += volume
            self._trades += 1
            return []
        if current is None:
            last = self._last_closed_ms
            if last is not None and close_ms <= last:
                raise ValueError(
                    f"late tick at {ts_ms} ms: its {self.timeframe} candle closing at {close_ms} "
                    f"is already closed (last closed {last})"
                )
            self._start(close_ms, price, volume)
            return []
        if close_ms < current:
            raise ValueError(
                f"late tick at {ts_ms} ms: its {self.timeframe} candle closes at {close_ms}, "
                f"before the current one closing at {current}"
            )
        closed = self._current_candle()
        self._last_closed_ms = current
        self._start(close_ms, price, volume)
        return [closed]

    def add_many(
        self,
        ts_ms: np.ndarray | Sequence[int],
        price: np.ndarray | Sequence[float],
        volume: np.ndarray | Sequence[float],
    ) -> list[dict]:
        """Fold a batch of ticks (arrays, arrival order) with a numba kernel; return closed candles.

        Equivalent to calling ``add`` for each tick in order and concatenating the results, but
        atomic: a batch holding a late tick raises ``ValueError`` and changes nothing.
        """
        ts, px, vol = _prepare_ticks(ts_ms, price, volume)
        if ts.shape[0] == 0:
            return []
        state_i = np.array(
            [
                self._close_ms is not None,
                self._close_ms or 0,
                self._trades,
                self._last_closed_ms is not None,
                self._last_closed_ms or 0,
            ],
            dtype=np.int64,
        )
        state_f = np.array(
            [self._open, self._high, self._low, self._close, self._volume], dtype=np.float64
        )
        try:
            arrays = builder_fold_nb(ts, px, vol, self._interval_ms, state_i, state_f)
        except ValueError as exc:
            raise ValueError(f"{exc} ({self.timeframe}; the batch was rejected whole)") from None
        s = state_i.tolist()
        f = state_f.tolist()
        self._close_ms = s[_S_CLOSE_MS] if s[_S_HAS_CURRENT] else None
        self._trades = s[_S_TRADES]
        self._last_closed_ms = s[_S_LAST_CLOSED_MS] if s[_S_HAS_LAST] else None
        self._open, self._high, self._low, self._close, self._volume = (
            f[_F_OPEN],
            f[_F_HIGH],
            f[_F_LOW],
            f[_F_CLOSE],
            f[_F_VOLUME],
        )
        if arrays[0].shape[0] == 0:
            return []
        columns = [a.tolist() for a in arrays]
        return [dict(zip(CANDLE_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]

    def flush(self, now_ms: int) -> list[dict]:
        """Close the current candle if its close time is <= ``now_ms``; return it (or ``[]``).

        Used when time passes with no trades: the candle stamped 09:05 is final at 09:05:00.000.
        """
        current = self._close_ms
        if current is None or current > operator.index(now_ms):
            return []
        closed = self._current_candle()
        self._last_closed_ms = current
        self._close_ms = None
        return [closed]


def aggregate_to_timeframe(ticks: Iterable[dict], timeframe: str) -> Iterator[dict]:
    """Stream right-aligned candles from tick dicts (the user's seed design).

    ``ticks`` yields dicts with ``timestamp`` (int epoch ms), ``price`` and ``volume``, sorted
    by timestamp ascending (equal timestamps allowed). Yields ``{"timestamp": close ms (int),
    "open", "high", "low", "close", "volume" (float), "trades" (int)}`` as each candle closes,
    and the last candle when the ticks run out; memory stays constant. Raises ``ValueError`` at
    once for an unknown timeframe, and while iterating for a tick older than its predecessor.
    """
    return _stream_candles(ticks, CandleBuilder(timeframe))


def _stream_candles(ticks: Iterable[dict], builder: CandleBuilder) -> Iterator[dict]:
    previous: int | None = None
    for tick in ticks:
        ts = operator.index(tick["timestamp"])
        if previous is not None and ts < previous:
            raise ValueError(
                f"ticks must be sorted by timestamp: {ts} after {previous} ({_UNSORTED_HINT})"
            )
        previous = ts
        yield from builder.add(ts, tick["price"], tick["volume"])
    last = builder.current
    if last is not None:
        yield from builder.flush(last["timestamp"])
