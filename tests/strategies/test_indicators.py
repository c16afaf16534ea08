"""Indicator kernels: each against a plain-Python reference, hand-checked examples, exact warm-up,
missing-value rules, no lookahead, long-series accuracy and input validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from strategies.indicators import (
    atr,
    bollinger,
    donchian,
    ema,
    ema_nb,
    macd,
    obv,
    rsi,
    sma,
    sma_nb,
    stochastic,
    vwap,
    wma,
)

NAN = math.nan
HYPOTHESIS = settings(max_examples=80, deadline=None)

Bars = dict[str, np.ndarray]
Outputs = tuple[np.ndarray, ...]
RefOutputs = tuple[list[float], ...]


# ---------------------------------------------------------------------------------------------
# Plain-Python references: loops over lists, the contract written out once more
# ---------------------------------------------------------------------------------------------


def ok(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def ref_sma(x: list[float], n: int) -> list[float]:
    out = []
    for i in range(len(x)):
        window = x[max(0, i - n + 1) : i + 1]
        if i < n - 1 or not ok(*window):
            out.append(NAN)
            continue
        total = 0.0
        for v in window:
            total += v
        out.append(total / n)
    return out


def ref_wma(x: list[float], n: int) -> list[float]:
    out = []
    for i in range(len(x)):
        window = x[max(0, i - n + 1) : i + 1]
        if i < n - 1 or not ok(*window):
            out.append(NAN)
            continue
        total = 0.0
        for weight, v in enumerate(window, start=1):
            total += weight * v
        out.append(total / (n * (n + 1) / 2))
    return out


def ref_ema(x: list[float], n: int) -> list[float]:
    """Seeded with the mean of the first n valid values; a missing value starts it over."""
    alpha = 2 / (n + 1)
    out = []
    seed: list[float] = []
    value = NAN
    for v in x:
        if not ok(v):
            seed = []
            value = NAN
            out.append(NAN)
        elif len(seed) < n:
            seed.append(v)
            if len(seed) == n:
                value = sum(seed) / n
            out.append(value)
        else:
            value = value + alpha * (v - value)
            out.append(value)
    return out


def ref_rsi(close: list[float], n: int) -> list[float]:
    out = []
    prev = None
    gains: list[float] = []
    losses: list[float] = []
    avg_gain = avg_loss = 0.0
    for c in close:
        if not ok(c):
            prev = None
            out.append(NAN)
            continue
        if prev is None:
            prev = c
            gains, losses = [], []
            out.append(NAN)
            continue
        change = c - prev
        prev = c
        gain = max(change, 0.0)
        loss = max(-change, 0.0)
        if len(gains) < n:
            gains.append(gain)
            losses.append(loss)
            if len(gains) < n:
                out.append(NAN)
                continue
            avg_gain = sum(gains) / n
            avg_loss = sum(losses) / n
        else:
            avg_gain = (avg_gain * (n - 1) + gain) / n
            avg_loss = (avg_loss * (n - 1) + loss) / n
        if avg_loss == 0 and avg_gain == 0:
            out.append(50.0)
        elif avg_loss == 0:
            out.append(100.0)
        else:
            out.append(100 - 100 / (1 + avg_gain / avg_loss))
    return out


def ref_macd(close: list[float], fast: int, slow: int, signal: int) -> RefOutputs:
    line = [a - b for a, b in zip(ref_ema(close, fast), ref_ema(close, slow), strict=True)]
    signal_line = ref_ema(line, signal)
    return line, signal_line, [a - b for a, b in zip(line, signal_line, strict=True)]


def ref_bollinger(close: list[float], n: int, k: float) -> RefOutputs:
    middle, upper, lower = [], [], []
    for i in range(len(close)):
        window = close[max(0, i - n + 1) : i + 1]
        if i < n - 1 or not ok(*window):
            for band in (middle, upper, lower):
                band.append(NAN)
            continue
        mean = sum(window) / n
        deviation = 0.0
        for v in window:
            deviation += (v - mean) ** 2
        std = math.sqrt(deviation / n)
        middle.append(mean)
        upper.append(mean + k * std)
        lower.append(mean - k * std)
    return middle, upper, lower


def ref_atr(high: list[float], low: list[float], close: list[float], n: int) -> list[float]:
    out = []
    prev_close = None
    ranges: list[float] = []
    value = NAN
    for h, lo, c in zip(high, low, close, strict=True):
        if not ok(h, lo, c):
            prev_close = None
            out.append(NAN)
            continue
        if prev_close is None:
            true_range = h - lo
            ranges = []
        else:
            true_range = max(h - lo, abs(h - prev_close), abs(lo - prev_close))
        prev_close = c
        if len(ranges) < n:
            ranges.append(true_range)
            value = sum(ranges) / n if len(ranges) == n else NAN
        else:
            value = (value * (n - 1) + true_range) / n
        out.append(value)
    return out


def ref_rolling_extreme(x: list[float], n: int, pick: Callable) -> list[float]:
    out = []
    for i in range(len(x)):
        window = x[max(0, i - n + 1) : i + 1]
        out.append(pick(window) if i >= n - 1 and ok(*window) else NAN)
    return out


def ref_stochastic(
    high: list[float], low: list[float], close: list[float], k: int, d: int
) -> RefOutputs:
    highest = ref_rolling_extreme(high, k, max)
    lowest = ref_rolling_extreme(low, k, min)
    k_line = []
    for hh, ll, c in zip(highest, lowest, close, strict=True):
        if not ok(hh, ll, c):
            k_line.append(NAN)
        elif hh == ll:
            k_line.append(50.0)
        else:
            k_line.append(100 * (c - ll) / (hh - ll))
    return k_line, ref_sma(k_line, d)


def ref_donchian(high: list[float], low: list[float], n: int) -> RefOutputs:
    upper = ref_rolling_extreme(high, n, max)
    lower = ref_rolling_extreme(low, n, min)
    return upper, lower, [(u + lo) / 2 for u, lo in zip(upper, lower, strict=True)]


def ref_vwap(
    high: list[float], low: list[float], close: list[float], volume: list[float], n: int
) -> list[float]:
    out = []
    for i in range(len(close)):
        if i < n - 1:
            out.append(NAN)
            continue
        weighted = 0.0
        total_volume = 0.0
        missing = False
        for j in range(i - n + 1, i + 1):
            typical = (high[j] + low[j] + close[j]) / 3
            if not ok(typical, volume[j], typical * volume[j]):
                missing = True
                break
            weighted += typical * volume[j]
            total_volume += volume[j]
        out.append(NAN if missing or total_volume == 0 else weighted / total_volume)
    return out


def ref_obv(close: list[float], volume: list[float]) -> list[float]:
    out = []
    prev = None
    total = 0.0
    for c, v in zip(close, volume, strict=True):
        if not ok(c, v):
            prev = None
            out.append(NAN)
            continue
        if prev is None:
            total = 0.0
        elif c > prev:
            total += v
        elif c < prev:
            total -= v
        prev = c
        out.append(total)
    return out


# ---------------------------------------------------------------------------------------------
# One table drives the generic tests
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    call: Callable[[Bars, tuple], Outputs]
    reference: Callable[[dict[str, list[float]], tuple], RefOutputs]
    params: tuple[tuple, ...]
    warmup: Callable[[tuple], tuple[int, ...]]


def _one(arr: np.ndarray) -> Outputs:
    return (arr,)


SPECS = (
    Spec(
        "sma",
        lambda b, p: _one(sma(b["close"], *p)),
        lambda b, p: (ref_sma(b["close"], *p),),
        ((1,), (2,), (5,), (20,)),
        lambda p: (p[0] - 1,),
    ),
    Spec(
        "ema",
        lambda b, p: _one(ema(b["close"], *p)),
        lambda b, p: (ref_ema(b["close"], *p),),
        ((1,), (2,), (5,), (20,)),
        lambda p: (p[0] - 1,),
    ),
    Spec(
        "wma",
        lambda b, p: _one(wma(b["close"], *p)),
        lambda b, p: (ref_wma(b["close"], *p),),
        ((1,), (2,), (5,), (20,)),
        lambda p: (p[0] - 1,),
    ),
    Spec(
        "rsi",
        lambda b, p: _one(rsi(b["close"], *p)),
        lambda b, p: (ref_rsi(b["close"], *p),),
        ((1,), (2,), (14,)),
        lambda p: (p[0],),
    ),
    Spec(
        "macd",
        lambda b, p: tuple(macd(b["close"], *p)),
        lambda b, p: ref_macd(b["close"], *p),
        ((2, 3, 2), (12, 26, 9), (5, 3, 4), (1, 1, 1)),
        lambda p: (max(p[:2]) - 1, max(p[:2]) + p[2] - 2, max(p[:2]) + p[2] - 2),
    ),
    Spec(
        "bollinger",
        lambda b, p: tuple(bollinger(b["close"], *p)),
        lambda b, p: ref_bollinger(b["close"], *p),
        ((1, 2.0), (5, 2.0), (20, 1.5)),
        lambda p: (p[0] - 1,) * 3,
    ),
    Spec(
        "atr",
        lambda b, p: _one(atr(b["high"], b["low"], b["close"], *p)),
        lambda b, p: (ref_atr(b["high"], b["low"], b["close"], *p),),
        ((1,), (3,), (14,)),
        lambda p: (p[0] - 1,),
    ),
    Spec(
        "stochastic",
        lambda b, p: tuple(stochastic(b["high"], b["low"], b["close"], *p)),
        lambda b, p: ref_stochastic(b["high"], b["low"], b["close"], *p),
        ((1, 1), (5, 3), (14, 3)),
        lambda p: (p[0] - 1, p[0] + p[1] - 2),
    ),
    Spec(
        "donchian",
        lambda b, p: tuple(donchian(b["high"], b["low"], *p)),
        lambda b, p: ref_donchian(b["high"], b["low"], *p),
        ((1,), (3,), (20,)),
        lambda p: (p[0] - 1,) * 3,
    ),
    Spec(
        "vwap",
        lambda b, p: _one(vwap(b["high"], b["low"], b["close"], b["volume"], *p)),
        lambda b, p: (ref_vwap(b["high"], b["low"], b["close"], b["volume"], *p),),
        ((1,), (4,), (20,)),
        lambda p: (p[0] - 1,),
    ),
    Spec(
        "obv",
        lambda b, p: _one(obv(b["close"], b["volume"])),
        lambda b, p: (ref_obv(b["close"], b["volume"]),),
        ((),),
        lambda p: (0,),
    ),
)
SPEC_PARAMS = [
    pytest.param(spec, params, id=f"{spec.name}{list(params)}")
    for spec in SPECS
    for params in spec.params
]


def make_bars(
    seed: int,
    size: int,
    *,
    flat: bool = True,
    zero_volume: bool = True,
    missing: bool = False,
    level: float = 100.0,
) -> Bars:
    """Random OHLCV on a 0.01 price grid: a random walk with optional flat stretches (a bar with
    high == low == close, repeated), zero-volume stretches and missing (NaN/inf) values."""
    rng = np.random.default_rng(seed)
    close = np.round(level + np.cumsum(rng.normal(0.0, 1.0, size)), 2)
    high = close + np.round(np.abs(rng.normal(0.0, 0.6, size)), 2)
    low = close - np.round(np.abs(rng.normal(0.0, 0.6, size)), 2)
    volume = np.round(rng.exponential(10.0, size), 3)
    if flat and size:
        for _ in range(size // 25 + 1):
            start = int(rng.integers(0, max(size, 1)))
            stop = min(size, start + int(rng.integers(1, 30)))
            close[start:stop] = high[start:stop] = low[start:stop] = close[start]
    if zero_volume:
        for _ in range(size // 60 + 1):
            start = int(rng.integers(0, max(size, 1)))
            volume[start : start + int(rng.integers(1, 25))] = 0.0
    bars = {"high": high, "low": low, "close": close, "volume": volume}
    if missing and size:
        for _ in range(int(rng.integers(1, 4))):
            field = str(rng.choice(list(bars)))
            bars[field][int(rng.integers(0, size))] = rng.choice([np.nan, np.inf, -np.inf])
        if rng.random() < 0.3:  # leading NaNs, as in an indicator of an indicator
            bars["close"][: int(rng.integers(1, 6))] = np.nan
    return bars


def as_lists(bars: Bars) -> dict[str, list[float]]:
    return {name: [float(v) for v in values] for name, values in bars.items()}


def assert_matches(actual: np.ndarray, expected: list[float], *, atol: float) -> None:
    """Same NaN positions exactly; finite values within 1e-9 relative (or ``atol``)."""
    expected_arr = np.array(expected, dtype=np.float64)
    assert actual.dtype == np.float64
    assert actual.shape == expected_arr.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected_arr))
    np.testing.assert_allclose(actual, expected_arr, rtol=1e-9, atol=atol, equal_nan=True)


def scale_of(bars: Bars) -> float:
    """The inputs' magnitude: absolute tolerances for values near 0 (MACD, a narrow band)."""
    finite = [np.abs(v[np.isfinite(v)]) for v in bars.values()]
    return max([1.0] + [float(v.max()) for v in finite if v.size])


def check_against_reference(spec: Spec, params: tuple, bars: Bars) -> None:
    outputs = spec.call(bars, params)
    expected = spec.reference(as_lists(bars), params)
    assert len(outputs) == len(expected)
    atol = 1e-9 * scale_of(bars)
    for actual, want in zip(outputs, expected, strict=True):
        assert_matches(actual, want, atol=atol)


# ---------------------------------------------------------------------------------------------
# Against the reference, warm-up, missing values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "params"), SPEC_PARAMS)
def test_indicator_matches_reference(spec: Spec, params: tuple) -> None:
    longest = max(spec.warmup(params))
    sizes = sorted({0, 1, 2, longest, longest + 1, longest + 2, 3 * longest + 7, 257})
    for seed, size in enumerate(sizes):
        check_against_reference(spec, params, make_bars(seed, size))


@pytest.mark.parametrize(("spec", "params"), SPEC_PARAMS)
def test_indicator_matches_reference_with_missing_values(spec: Spec, params: tuple) -> None:
    for seed in range(12):
        bars = make_bars(1_000 + seed, 60 + 7 * seed, missing=True)
        check_against_reference(spec, params, bars)


@pytest.mark.parametrize(("spec", "params"), SPEC_PARAMS)
def test_indicator_warmup_is_exact(spec: Spec, params: tuple) -> None:
    warmups = spec.warmup(params)
    for size in sorted({0, 1, *warmups, *(w + 1 for w in warmups), max(warmups) + 40}):
        # Positive volume: a window without volume is NaN in vwap by design, not warm-up.
        bars = make_bars(size, size, zero_volume=False)
        outputs = spec.call(bars, params)
        assert len(outputs) == len(warmups)
        for out, warmup in zip(outputs, warmups, strict=True):
            assert out.shape == (size,)
            assert np.isnan(out[:warmup]).all()
            assert np.isfinite(out[warmup:]).all()


def test_indicator_inputs_are_not_modified() -> None:
    bars = make_bars(7, 120, missing=True)
    before = {name: values.copy() for name, values in bars.items()}
    for spec in SPECS:
        for params in spec.params:
            spec.call(bars, params)
    for name, values in bars.items():
        np.testing.assert_array_equal(values, before[name])


# ---------------------------------------------------------------------------------------------
# No lookahead: output i never depends on bars after i
# ---------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 150),
    cut=st.floats(0.0, 1.0),
    missing=st.booleans(),
    mode=st.sampled_from(["truncate", "change", "append"]),
)
def test_indicators_never_look_ahead(
    seed: int, size: int, cut: float, missing: bool, mode: str
) -> None:
    bars = make_bars(seed, size, missing=missing)
    i = min(int(cut * size), size - 1)
    other = make_bars(seed + 1, size + 40, missing=True)
    if mode == "truncate":
        changed = {name: values[: i + 1] for name, values in bars.items()}
    elif mode == "change":
        # Later bars replaced by unrelated ones, NaN and inf included.
        changed = {
            name: np.concatenate([values[: i + 1], other[name][i + 1 : size]])
            for name, values in bars.items()
        }
    else:
        changed = {name: np.concatenate([values, other[name]]) for name, values in bars.items()}
    for spec in SPECS:
        for params in spec.params:
            for full, partial in zip(
                spec.call(bars, params), spec.call(changed, params), strict=True
            ):
                # Bit for bit, NaNs equal: the kernels make the same operations up to bar i.
                np.testing.assert_array_equal(full[: i + 1], partial[: i + 1], err_msg=spec.name)


# ---------------------------------------------------------------------------------------------
# Hand-checked examples
# ---------------------------------------------------------------------------------------------


def assert_exact(actual: np.ndarray, expected: list[float | Fraction]) -> None:
    np.testing.assert_allclose(
        actual, np.array([float(v) for v in expected]), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(np.isnan(actual), [math.isnan(v) for v in expected])


def test_sma_hand_example() -> None:
    assert_exact(sma([1, 2, 3, 4, 5], 3), [NAN, NAN, 2, 3, 4])
    assert_exact(sma([7.5], 1), [7.5])
    assert_exact(sma([1, 2], 3), [NAN, NAN])
    assert sma([], 3).shape == (0,)


def test_ema_hand_example() -> None:
    # alpha = 2 / (3 + 1) = 0.5; seed (2 + 4 + 6) / 3 = 4; 4 + 0.5 * (8 - 4) = 6; 6 + 0.5 * -2.
    assert_exact(ema([2, 4, 6, 8, 4], 3), [NAN, NAN, 4, 6, 5])
    assert_exact(ema([3, 1, 4], 1), [3, 1, 4])


def test_wma_hand_example() -> None:
    # (1*1 + 2*2 + 3*3) / 6 and (1*2 + 2*3 + 3*4) / 6.
    assert_exact(wma([1, 2, 3, 4], 3), [NAN, NAN, Fraction(14, 6), Fraction(20, 6)])


def test_rsi_hand_example() -> None:
    # Changes +1, -1, +2, 0, -3 with n = 2: seeds 0.5/0.5 -> 50; then Wilder smoothing
    # (1.25, 0.25) -> 83.33; (0.625, 0.125) -> 83.33; (0.3125, 1.5625) -> 16.67.
    expected = [NAN, NAN, 50, Fraction(250, 3), Fraction(250, 3), Fraction(50, 3)]
    assert_exact(rsi([10, 11, 10, 12, 12, 9], 2), expected)


def test_rsi_extremes() -> None:
    assert_exact(rsi([1, 2, 3, 4, 5], 2), [NAN, NAN, 100, 100, 100])
    assert_exact(rsi([5, 4, 3, 2, 1], 2), [NAN, NAN, 0, 0, 0])
    assert_exact(rsi([3, 3, 3, 3], 2), [NAN, NAN, 50, 50])
    # After a loss the average loss decays but stays positive: below 100, above 0.
    values = rsi([1, 0, 1, 2, 3, 4, 5, 6], 2)
    assert 0 < values[-1] < 100


def test_macd_hand_example() -> None:
    # fast = 1 is the close itself; slow = 2 (alpha 2/3) seeds 1.5 at bar 1; signal = 2 seeds
    # on the first two line values (1/2, 5/6). Worked out with fractions.
    line, signal_line, hist = macd([1, 2, 4, 8, 16], fast=1, slow=2, signal=2)
    assert_exact(line, [NAN, Fraction(1, 2), Fraction(5, 6), Fraction(29, 18), Fraction(173, 54)])
    assert_exact(signal_line, [NAN, NAN, Fraction(2, 3), Fraction(35, 27), Fraction(208, 81)])
    assert_exact(hist, [NAN, NAN, Fraction(1, 6), Fraction(17, 54), Fraction(103, 162)])


def test_macd_is_emas_and_named_fields() -> None:
    close = make_bars(3, 200)["close"]
    result = macd(close)
    np.testing.assert_array_equal(result.line, ema(close, 12) - ema(close, 26))
    np.testing.assert_array_equal(result.hist, result.line - result.signal_line)
    line, signal_line, hist = result
    assert line is result.line and signal_line is result.signal_line and hist is result.hist


def test_bollinger_hand_example() -> None:
    # Population std of 2, 4, 4, 4, 5, 5, 7, 9 is exactly 2 around a mean of 5.
    middle, upper, lower = bollinger([2, 4, 4, 4, 5, 5, 7, 9], n=8, k=1.0)
    assert_exact(middle, [NAN] * 7 + [5])
    assert_exact(upper, [NAN] * 7 + [7])
    assert_exact(lower, [NAN] * 7 + [3])
    bands = bollinger([1, 2, 3], n=3, k=2.0)
    assert_exact(bands.upper, [NAN, NAN, 2 + 2 * math.sqrt(2 / 3)])


def test_bollinger_flat_window_has_zero_width() -> None:
    close = np.array([100.1, 101.3, 99.7] + [100.3] * 10 + [100.4])
    middle, upper, lower = bollinger(close, n=5)
    for i in range(7, 13):  # windows made only of 100.3
        assert upper[i] == middle[i] == lower[i]
        assert middle[i] == pytest.approx(100.3, rel=1e-15)
    assert upper[13] > middle[13] > lower[13]


def test_bollinger_middle_is_sma() -> None:
    close = make_bars(5, 300, missing=True)["close"]
    np.testing.assert_array_equal(bollinger(close, 20).middle, sma(close, 20))


def test_atr_hand_example() -> None:
    # TR: 2 (bar 0: high - low), 2, 5 (gap up: 15 - 10), 7.5 (7 - 14.5). n = 2:
    # (2 + 2) / 2 = 2; (2 + 5) / 2 = 3.5; (3.5 + 7.5) / 2 = 5.5.
    out = atr([10, 11, 15, 11], [8, 9, 14, 7], [9, 10, 14.5, 8], n=2)
    assert_exact(out, [NAN, 2, 3.5, 5.5])


def test_stochastic_hand_example() -> None:
    # k = 2: bar 1 HH 12 LL 8 close 11 -> 75; bar 2 HH 12 LL 7 close 8 -> 20;
    # bar 3 HH 13 LL 7 close 12 -> 83.33. d = 2: 47.5 and 51.67.
    k_line, d_line = stochastic([10, 12, 11, 13], [8, 9, 7, 10], [9, 11, 8, 12], k=2, d=2)
    assert_exact(k_line, [NAN, 75, 20, Fraction(250, 3)])
    assert_exact(d_line, [NAN, NAN, 47.5, Fraction(155, 3)])


def test_stochastic_flat_range_is_50() -> None:
    result = stochastic([5, 5, 5, 6], [5, 5, 5, 4], [5, 5, 5, 5], k=3, d=1)
    assert_exact(result.k_line, [NAN, NAN, 50, 50])


def test_donchian_hand_example_includes_current_bar() -> None:
    upper, lower, middle = donchian([1, 3, 2, 5, 4], [0, 2, 1, 1, 3], n=3)
    assert_exact(upper, [NAN, NAN, 3, 5, 5])
    assert_exact(lower, [NAN, NAN, 0, 1, 1])
    assert_exact(middle, [NAN, NAN, 1.5, 3, 3])
    bars = make_bars(11, 300)
    channel = donchian(bars["high"], bars["low"], 20)
    assert (channel.upper[19:] >= bars["high"][19:]).all()
    assert (channel.lower[19:] <= bars["low"][19:]).all()


def test_vwap_hand_example() -> None:
    # Typical prices 1, 3, 5. Volumes 1, 3, 0: (1 + 9) / 4, then (9 + 0) / 3.
    assert_exact(vwap([2, 4, 6], [0, 2, 4], [1, 3, 5], [1, 3, 0], n=2), [NAN, 2.5, 3])
    # A window without volume is NaN; it recovers when volume comes back.
    assert_exact(vwap([2, 4, 6], [0, 2, 4], [1, 3, 5], [0, 0, 1], n=2), [NAN, NAN, 5])


def test_obv_hand_example() -> None:
    assert_exact(obv([10, 11, 11, 9, 12], [5, 2, 3, 4, 1]), [0, 2, 2, -2, -1])
    assert obv([], []).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Missing values: positions, restarts, infinities
# ---------------------------------------------------------------------------------------------


def test_windowed_indicators_blank_windows_holding_a_missing_value() -> None:
    assert_exact(sma([1, 2, NAN, 4, 5, 6, 7], 2), [NAN, 1.5, NAN, NAN, 4.5, 5.5, 6.5])
    assert_exact(sma([1, math.inf, 3, 4], 2), [NAN, NAN, NAN, 3.5])
    assert_exact(wma([1, -math.inf, 3, 4], 2), [NAN, NAN, NAN, Fraction(11, 3)])
    high = np.array([3.0, 4, 5, 6, 7, 8])
    low = np.array([1.0, 2, NAN, 4, 5, 6])
    upper, lower, middle = donchian(high, low, n=2)
    assert_exact(upper, [NAN, 4, 5, 6, 7, 8])  # highs are all present
    assert_exact(lower, [NAN, 1, NAN, NAN, 4, 5])
    assert_exact(middle, [NAN, 2.5, NAN, NAN, 5.5, 6.5])
    x = make_bars(2, 100)["close"]
    x[40] = np.nan
    for out in (sma(x, 10), wma(x, 10), *bollinger(x, 10)):
        assert np.isnan(out[40:50]).all()
        assert np.isfinite(out[9:40]).all() and np.isfinite(out[50:]).all()


def test_ema_restarts_after_a_missing_value() -> None:
    # alpha = 2/3; seed (1 + 2) / 2; 1.5 + 2/3 * 1.5; the NaN restarts: seed (4 + 6) / 2, then 7.
    assert_exact(ema([NAN, 1, 2, 3, NAN, 4, 6, 8], 2), [NAN, NAN, 1.5, 2.5, NAN, NAN, 5, 7])


def test_obv_restarts_at_zero_after_a_missing_bar() -> None:
    assert_exact(obv([1, 2, NAN, 3, 2], [1, 1, 1, 1, 1]), [0, 1, NAN, 0, -1])
    assert_exact(obv([1, 2, 3, 4], [1, NAN, 1, 1]), [0, NAN, 0, 1])


@pytest.mark.parametrize("name", ["ema", "rsi", "atr", "obv", "macd"])
def test_recursive_indicator_restart_equals_fresh_start(name: str) -> None:
    """After a missing bar, a recursive indicator is exactly what it would be on the rest."""
    spec = next(s for s in SPECS if s.name == name)
    bars = make_bars(9, 200)
    gap = 80
    bars["close"][gap] = np.nan
    rest = {field: values[gap + 1 :] for field, values in bars.items()}
    for params in spec.params:
        for full, fresh in zip(spec.call(bars, params), spec.call(rest, params), strict=True):
            assert np.isnan(full[gap])
            np.testing.assert_array_equal(full[gap + 1 :], fresh)


def test_rsi_and_atr_restart_warmups() -> None:
    close = np.arange(1.0, 31.0)
    close[10] = np.nan
    out = rsi(close, 5)
    assert np.isnan(out[:5]).all() and np.isfinite(out[5:10]).all()
    assert np.isnan(out[10:16]).all() and np.isfinite(out[16:]).all()
    out = atr(close + 1, close - 1, close, 5)
    assert np.isnan(out[:4]).all() and np.isfinite(out[4:10]).all()
    assert np.isnan(out[10:15]).all() and np.isfinite(out[15:]).all()


def test_macd_signal_seeds_on_first_valid_line_values() -> None:
    close = make_bars(4, 120)["close"]
    line, signal_line, _ = macd(close, 5, 10, 4)
    np.testing.assert_array_equal(signal_line[9:], ema(line[9:], 4))
    assert np.isnan(signal_line[:12]).all() and np.isfinite(signal_line[12:]).all()


# ---------------------------------------------------------------------------------------------
# Long series: accuracy does not drift, spikes and crashes leave no residue
# ---------------------------------------------------------------------------------------------


def long_bars(size: int) -> tuple[Bars, list[int]]:
    """Long OHLCV that breaks naive running sums, and the bars where each regime starts.

    Quarters: a random walk at 60_000 (a BTC price); the same level moving by cents (raw-price
    variance sums cancel away there); a crash to ~0.5 with three absurd spikes of random size
    around 1e12 (an uncompensated sum keeps ~1e-4 of them after they leave the window, and so
    does a compensation term that is not refreshed) and a 1e9 volume spike; then a walk ending
    in a flat stretch. Volumes are around 1.
    """
    rng = np.random.default_rng(2024)
    q = size // 4
    close = np.concatenate(
        [
            60_000 + np.cumsum(rng.normal(0, 30, q)),
            np.round(60_000 + np.cumsum(rng.normal(0, 0.01, q)), 2),
            0.5 + np.cumsum(rng.normal(0, 1e-4, q)),
            0.5 + np.cumsum(rng.normal(0, 1e-4, size - 3 * q)),
        ]
    )
    spike = 2 * q + 1_000
    close[spike : spike + 3] = 1e12 * (1 + rng.random(3))
    close[size - 500 : size - 100] = close[size - 500]
    high = close + np.abs(rng.normal(0, 1e-4, size)) * close
    low = close - np.abs(rng.normal(0, 1e-4, size)) * close
    volume = rng.exponential(1.0, size)
    volume[2 * q + 50] = 1e9
    bars = {"high": high, "low": low, "close": close, "volume": volume}
    return bars, [q, 2 * q, 2 * q + 50, spike, size - 500, size - 100]


def test_windowed_indicators_stay_accurate_on_long_series() -> None:
    size, n = 300_000, 20
    bars, boundaries = long_bars(size)
    lists = as_lists(bars)
    outputs = {
        "sma": (sma(bars["close"], n),),
        "wma": (wma(bars["close"], n),),
        "bollinger": tuple(bollinger(bars["close"], n)),
        "vwap": (vwap(bars["high"], bars["low"], bars["close"], bars["volume"], n),),
        "donchian": tuple(donchian(bars["high"], bars["low"], n)),
    }
    rng = np.random.default_rng(1)
    checked = [b + d for b in boundaries for d in range(-2, 2 * n + 2)]
    checked += [int(i) for i in rng.integers(n, size, 400)] + [size - 1]
    for i in checked:
        window = {name: values[i - n + 1 : i + 1] for name, values in lists.items()}
        expected = {
            "sma": (ref_sma(window["close"], n)[-1],),
            "wma": (ref_wma(window["close"], n)[-1],),
            "bollinger": tuple(b[-1] for b in ref_bollinger(window["close"], n, 2.0)),
            "vwap": (
                ref_vwap(window["high"], window["low"], window["close"], window["volume"], n)[-1],
            ),
            "donchian": tuple(b[-1] for b in ref_donchian(window["high"], window["low"], n)),
        }
        for name, outs in outputs.items():
            for out, want in zip(outs, expected[name], strict=True):
                assert out[i] == pytest.approx(want, rel=1e-9, abs=1e-12), (name, i)
        # The band width on its own, relative to itself: the variance did not cancel away.
        ref_middle, ref_upper, _ = ref_bollinger(window["close"], n, 2.0)
        width = outputs["bollinger"][1][i] - outputs["bollinger"][0][i]
        ref_width = ref_upper[-1] - ref_middle[-1]
        tolerance = 1e-9 * ref_width + 1e-14 * abs(ref_middle[-1])
        assert abs(width - ref_width) <= tolerance, i


def test_recursive_indicators_stay_accurate_on_long_series() -> None:
    bars, _ = long_bars(200_000)
    lists = as_lists(bars)
    close = lists["close"]
    cases = [
        (ema(bars["close"], 50), ref_ema(close, 50)),
        (rsi(bars["close"], 14), ref_rsi(close, 14)),
        (
            atr(bars["high"], bars["low"], bars["close"], 14),
            ref_atr(lists["high"], lists["low"], close, 14),
        ),
        (obv(bars["close"], bars["volume"]), ref_obv(close, lists["volume"])),
    ]
    for actual, expected in cases:
        assert_matches(actual, expected, atol=1e-9)
    line, signal_line, hist = macd(bars["close"])
    for actual, expected in zip((line, signal_line, hist), ref_macd(close, 12, 26, 9), strict=True):
        assert_matches(actual, expected, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Inputs and validation
# ---------------------------------------------------------------------------------------------


def test_indicators_accept_lists_ints_series_and_strided_arrays() -> None:
    values = list(range(1, 31))
    want = sma(np.array(values, dtype=np.float64), 5)
    np.testing.assert_array_equal(sma(values, 5), want)
    np.testing.assert_array_equal(sma(np.array(values, dtype=np.int32), np.int64(5)), want)
    np.testing.assert_array_equal(sma(pd.Series(values, dtype="float32"), 5), want)
    strided = np.repeat(np.array(values, dtype=np.float64), 2)[::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(sma(strided, 5), want)
    np.testing.assert_array_equal(sma(np.array(values, dtype=object), 5), want)


def test_kernels_compose_inside_numba() -> None:
    @njit
    def crossover_nb(close: np.ndarray) -> np.ndarray:
        return ema_nb(close, 5) - sma_nb(close, 10)

    close = make_bars(8, 100)["close"]
    np.testing.assert_array_equal(crossover_nb(close), ema(close, 5) - sma(close, 10))


def test_mismatched_lengths_are_rejected() -> None:
    a5, a4 = np.ones(5), np.ones(4)
    with pytest.raises(ValueError, match=r"equal lengths: low has 4 values but high has 5"):
        atr(a5, a4, a5, 2)
    with pytest.raises(ValueError, match=r"close has 4 values but high has 5"):
        stochastic(a5, a5, a4)
    with pytest.raises(ValueError, match=r"low has 4 values but high has 5"):
        donchian(a5, a4, 2)
    with pytest.raises(ValueError, match=r"volume has 4 values but high has 5"):
        vwap(a5, a5, a5, a4, 2)
    with pytest.raises(ValueError, match=r"volume has 4 values but close has 5"):
        obv(a5, a4)


PERIOD_CALLS = [
    ("sma", "n", lambda p: sma(np.ones(5), p)),
    ("ema", "n", lambda p: ema(np.ones(5), p)),
    ("wma", "n", lambda p: wma(np.ones(5), p)),
    ("rsi", "n", lambda p: rsi(np.ones(5), p)),
    ("macd fast", "fast", lambda p: macd(np.ones(5), fast=p)),
    ("macd slow", "slow", lambda p: macd(np.ones(5), slow=p)),
    ("macd signal", "signal", lambda p: macd(np.ones(5), signal=p)),
    ("bollinger", "n", lambda p: bollinger(np.ones(5), p)),
    ("atr", "n", lambda p: atr(np.ones(5), np.ones(5), np.ones(5), p)),
    ("stochastic k", "k", lambda p: stochastic(np.ones(5), np.ones(5), np.ones(5), k=p)),
    ("stochastic d", "d", lambda p: stochastic(np.ones(5), np.ones(5), np.ones(5), d=p)),
    ("donchian", "n", lambda p: donchian(np.ones(5), np.ones(5), p)),
    ("vwap", "n", lambda p: vwap(np.ones(5), np.ones(5), np.ones(5), np.ones(5), p)),
]


@pytest.mark.parametrize(("label", "arg", "call"), PERIOD_CALLS, ids=[c[0] for c in PERIOD_CALLS])
@pytest.mark.parametrize("bad", [0, -3, 2.5, 3.0, True, "3", None])
def test_bad_periods_are_rejected(label: str, arg: str, call: Callable, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"^{arg} must be an integer >= 1, got "):
        call(bad)


def test_two_dimensional_and_non_numeric_inputs_are_rejected() -> None:
    grid = np.ones((5, 2))
    with pytest.raises(ValueError, match=r"x must be one-dimensional, got shape \(5, 2\)"):
        sma(grid, 2)
    with pytest.raises(ValueError, match=r"close must be one-dimensional, got shape \(\)"):
        rsi(3.0, 2)
    with pytest.raises(ValueError, match=r"low must be one-dimensional, got shape \(5, 2\)"):
        atr(np.ones(5), grid, np.ones(5), 2)
    with pytest.raises(ValueError, match=r"volume must be one-dimensional"):
        obv(np.ones(10), grid)
    with pytest.raises(ValueError, match=r"x must hold numbers, got dtype <U1"):
        ema(["a", "b"], 2)
    with pytest.raises(ValueError, match=r"close must hold numbers"):
        macd(np.array(["2024-01-01"], dtype="datetime64[D]"))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "2", None, True])
def test_bollinger_rejects_bad_k(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^k must be a (finite )?number >= 0, got "):
        bollinger(np.ones(30), 20, bad)


def test_period_longer_than_series_gives_all_nan() -> None:
    bars = make_bars(1, 10, zero_volume=False)
    for out in (
        sma(bars["close"], 11),
        rsi(bars["close"], 10),
        *macd(bars["close"]),
        *stochastic(bars["high"], bars["low"], bars["close"], 11),
        vwap(bars["high"], bars["low"], bars["close"], bars["volume"], 50),
    ):
        assert out.shape == (10,) and np.isnan(out).all()
