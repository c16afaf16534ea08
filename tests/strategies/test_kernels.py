"""Signal kernels against plain-Python references of the documented rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.kernels import (
    band_reentry_signals_nb,
    breakout_signals_nb,
    cross_signals_nb,
    first_non_finite_nb,
    first_not_increasing_nb,
    level_reentry_signals_nb,
)

# Few distinct values, so equalities (touches) and NaNs are frequent.
values = st.sampled_from([1.0, 2.0, 3.0, math.nan])
series = st.integers(0, 40).flatmap(
    lambda n: st.tuples(*(st.lists(values, min_size=n, max_size=n) for _ in range(3)))
)


def reference_cross(fast: list[float], slow: list[float]) -> list[int]:
    out = [0] * len(fast)
    for i in range(1, len(fast)):
        if fast[i - 1] < slow[i - 1] and fast[i] > slow[i]:
            out[i] = 1
        elif fast[i - 1] > slow[i - 1] and fast[i] < slow[i]:
            out[i] = -1
    return out


def reference_level(x: list[float], lower: float, upper: float) -> list[int]:
    out = [0] * len(x)
    for i in range(1, len(x)):
        if x[i - 1] <= lower < x[i]:
            out[i] = 1
        elif x[i - 1] >= upper > x[i]:
            out[i] = -1
    return out


def reference_band(x: list[float], lower: list[float], upper: list[float]) -> list[int]:
    out = [0] * len(x)
    for i in range(1, len(x)):
        if x[i - 1] <= lower[i - 1] and x[i] > lower[i]:
            out[i] = 1
        elif x[i - 1] >= upper[i - 1] and x[i] < upper[i]:
            out[i] = -1
    return out


def reference_breakout(x: list[float], upper: list[float], lower: list[float]) -> list[int]:
    out = [0] * len(x)
    for i in range(1, len(x)):
        if x[i] > upper[i - 1]:
            out[i] = 1
        elif x[i] < lower[i - 1]:
            out[i] = -1
    return out


def arr(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


@settings(max_examples=200, deadline=None)
@given(series)
def test_cross_signals_nb_equals_reference(data) -> None:
    fast, slow, _ = data
    result = cross_signals_nb(arr(fast), arr(slow))
    assert result.dtype == np.int8
    assert result.tolist() == reference_cross(fast, slow)


@settings(max_examples=200, deadline=None)
@given(series, st.sampled_from([1.0, 2.0]), st.sampled_from([2.0, 3.0]))
def test_level_reentry_signals_nb_equals_reference(data, lower, upper) -> None:
    x, _, _ = data
    assert level_reentry_signals_nb(arr(x), lower, upper).tolist() == reference_level(
        x, lower, upper
    )


@settings(max_examples=200, deadline=None)
@given(series)
def test_band_reentry_signals_nb_equals_reference(data) -> None:
    x, a, b = data
    lower = [min(p, q) for p, q in zip(a, b, strict=True)]
    upper = [max(p, q) for p, q in zip(a, b, strict=True)]
    assert band_reentry_signals_nb(arr(x), arr(lower), arr(upper)).tolist() == reference_band(
        x, lower, upper
    )


@settings(max_examples=200, deadline=None)
@given(series)
def test_breakout_signals_nb_equals_reference(data) -> None:
    x, a, b = data
    upper = [max(p, q) for p, q in zip(a, b, strict=True)]
    lower = [min(p, q) for p, q in zip(a, b, strict=True)]
    assert breakout_signals_nb(arr(x), arr(upper), arr(lower)).tolist() == reference_breakout(
        x, upper, lower
    )


def test_cross_signals_nb_needs_strict_sides() -> None:
    fast = arr([1, 3, 1, 2, 1, 1, 2, 3, 3, 1])
    slow = arr([2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    # bar 1: 1 < 2 then 3 > 2: buy. bar 2: 3 > 2 then 1 < 2: sell. bars 3-4: a touch from
    # below (2 == 2) and back: none. bars 6-7: below, equal, above: no cross, since equality is
    # on neither side. bar 9: 3 > 2 then 1 < 2: sell.
    assert cross_signals_nb(fast, slow).tolist() == [0, 1, -1, 0, 0, 0, 0, 0, 0, -1]


def test_level_reentry_signals_nb_counts_the_level_inside_the_zone() -> None:
    rsi = arr([35, 30, 31, 30, 29, 30, 70, 69, 71, 75, 70, 50])
    # bar 2: 30 (<= 30, in the zone) -> 31 leaves it: buy. bar 3-5: re-enters, stays: none
    # (30 -> 70 at bar 6 leaves the lower zone: buy). bar 7: 70 (>= 70) -> 69: sell.
    # bar 10: 70 stays in the zone; bar 11: 70 -> 50 leaves it: sell.
    assert level_reentry_signals_nb(rsi, 30.0, 70.0).tolist() == [
        0, 0, 1, 0, 0, 0, 1, -1, 0, 0, 0, -1,
    ]  # fmt: skip


def test_breakout_signals_nb_uses_previous_channel() -> None:
    x = arr([5, 6, 6, 7, 3])
    upper = arr([5, 6, 6, 7, 7])  # includes the current bar: x never exceeds it on the same bar
    lower = arr([5, 5, 5, 5, 3])
    assert breakout_signals_nb(x, upper, lower).tolist() == [0, 1, 0, 1, -1]


@pytest.mark.parametrize(
    "kernel, args",
    [
        (cross_signals_nb, (np.zeros(3), np.zeros(2))),
        (band_reentry_signals_nb, (np.zeros(3), np.zeros(3), np.zeros(2))),
        (breakout_signals_nb, (np.zeros(3), np.zeros(2), np.zeros(3))),
    ],
)
def test_signal_kernels_reject_unequal_lengths(kernel, args) -> None:
    with pytest.raises(ValueError, match="same length"):
        kernel(*args)


def test_first_non_finite_nb_finds_nan_and_inf() -> None:
    assert first_non_finite_nb(arr([1, 2, 3])) == -1
    assert first_non_finite_nb(arr([1, math.inf, math.nan])) == 1
    assert first_non_finite_nb(arr([])) == -1


def test_first_not_increasing_nb_finds_duplicates_and_descents() -> None:
    assert first_not_increasing_nb(np.array([1, 2, 3], dtype=np.int64)) == -1
    assert first_not_increasing_nb(np.array([1, 2, 2, 3], dtype=np.int64)) == 2
    assert first_not_increasing_nb(np.array([1, 3, 2], dtype=np.int64)) == 2
