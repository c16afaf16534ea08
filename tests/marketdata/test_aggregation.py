"""Right-aligned candle aggregation: the boundary contract, every form against each other, against a
plain-Python reference and against pandas ``resample(closed="right", label="right")``."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.aggregation import (
    CANDLE_FIELDS,
    TIMEFRAMES,
    CandleBuilder,
    aggregate_all,
    aggregate_arrays,
    aggregate_nb,
    aggregate_to_timeframe,
    parse_timeframe,
    resample_candles,
)

MINUTE = 60_000
DAY = 86_400_000
# 2023-11-15 00:00:00 UTC: a day boundary, so also a boundary of every timeframe.
BASE = 19_676 * DAY
INTERVAL_MS = {"1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "1h": 60 * MINUTE}
INTERVAL_MS |= {"4h": 4 * 60 * MINUTE, "1d": DAY}
PANDAS_RULES = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h", "4h": "4h", "1d": "1D"}
PRICE_FIELDS = ("open", "high", "low", "close")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

HYPOTHESIS = settings(max_examples=60, deadline=None)


def ms(*args: int) -> int:
    """Epoch ms of a UTC wall-clock time: ms(2024, 3, 1, 9, 5) or with seconds and microseconds."""
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


# ---------------------------------------------------------------------------------------------
# References and helpers
# ---------------------------------------------------------------------------------------------


def reference_candles(
    ts: list[int], price: list[float], volume: list[float], interval: int
) -> list[dict]:
    """Plain-Python statement of the contract: group by ceil(t / I) * I, in tick order."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(ts):
        close_ms = t if t % interval == 0 else (t // interval + 1) * interval
        groups.setdefault(close_ms, []).append(i)
    candles = []
    for close_ms in sorted(groups):
        idx = groups[close_ms]
        vol = volume[idx[0]]
        for i in idx[1:]:
            vol += volume[i]
        candles.append(
            {
                "timestamp": close_ms,
                "open": price[idx[0]],
                "high": max(price[i] for i in idx),
                "low": min(price[i] for i in idx),
                "close": price[idx[-1]],
                "volume": vol,
                "trades": len(idx),
            }
        )
    return candles


def pandas_candles(ts: np.ndarray, price: np.ndarray, volume: np.ndarray, timeframe: str) -> dict:
    """pandas' resample(closed="right", label="right") of the same ticks, empty bins dropped."""
    index = pd.to_datetime(ts, unit="ms", utc=True)
    frame = pd.DataFrame({"price": price, "volume": volume}, index=index)
    # origin="epoch" pins sub-day bins to the epoch; pandas ignores origin for a Day rule on a
    # tz-aware index (and warns) and aligns 1D bins to midnight of the index's zone, here UTC.
    origin = {} if timeframe == "1d" else {"origin": "epoch"}
    resampled = frame.resample(PANDAS_RULES[timeframe], closed="right", label="right", **origin)
    out = resampled.agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("volume", "sum"),
        trades=("price", "count"),
    )
    out = out[out["trades"] > 0]
    result = {"timestamp": out.index.as_unit("ms").asi8.astype(np.int64)}
    result |= {name: out[name].to_numpy() for name in (*PRICE_FIELDS, "volume")}
    result["trades"] = out["trades"].to_numpy().astype(np.int64)
    return result


def rows(candles: dict[str, np.ndarray]) -> list[dict]:
    """Array candles as the list of dicts the streaming forms yield."""
    columns = [candles[f].tolist() for f in CANDLE_FIELDS]
    return [dict(zip(CANDLE_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]


def assert_arrays_equal(got: dict, expected: dict, *, volume_rel: float = 0.0) -> None:
    """Timestamps, prices and trades exactly equal; volume exactly or within volume_rel."""
    assert set(got) == set(CANDLE_FIELDS)
    assert got["timestamp"].dtype == np.int64
    assert got["trades"].dtype == np.int64
    for name in (*PRICE_FIELDS, "volume"):
        assert got[name].dtype == np.float64
    for name in ("timestamp", *PRICE_FIELDS, "trades"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    if volume_rel:
        np.testing.assert_allclose(got["volume"], expected["volume"], rtol=volume_rel, atol=0)
    else:
        np.testing.assert_array_equal(got["volume"], expected["volume"], err_msg="volume")


def tick_dicts(ts: np.ndarray, price: np.ndarray, volume: np.ndarray) -> list[dict]:
    return [
        {"timestamp": t, "price": p, "volume": v}
        for t, p, v in zip(ts.tolist(), price.tolist(), volume.tolist(), strict=True)
    ]


def builder_candles(timeframe: str, ts: np.ndarray, price: np.ndarray, volume: np.ndarray) -> list:
    builder = CandleBuilder(timeframe)
    candles = []
    for t, p, v in zip(ts.tolist(), price.tolist(), volume.tolist(), strict=True):
        candles += builder.add(t, p, v)
    if builder.current is not None:
        candles += builder.flush(builder.current["timestamp"])
    return candles


def random_ticks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~n ticks, 0-50 ms apart with duplicates and some multi-hour gaps, random-walk prices."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 51, n)
    steps[rng.random(n) < 0.2] = 0
    steps[rng.random(n) < 2e-4] = rng.integers(DAY // 24, DAY, 1)
    ts = BASE - 3 * 3_600_000 + np.cumsum(steps)
    # Put a share of ticks exactly on minute boundaries, where closed/label mistakes show.
    on_edge = rng.random(n) < 0.01
    ts[on_edge] = (ts[on_edge] // MINUTE) * MINUTE
    ts = np.sort(ts).astype(np.int64)
    price = np.round(30_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n))), 2)
    volume = rng.exponential(0.5, n)
    return ts, price, volume


@st.composite
def ticks(draw: st.DrawFn, min_size: int = 0, max_size: int = 250) -> tuple:
    """Sorted int64 ms times (dense or sparse, duplicates, exact boundaries), prices, volumes."""
    n = draw(st.integers(min_size, max_size))
    spacing = draw(st.sampled_from([50, 1_000, MINUTE, 3_600_000, DAY]))
    steps = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(0, spacing), st.integers(0, 20 * spacing)),
            min_size=n,
            max_size=n,
        )
    )
    start = BASE + draw(st.integers(-2 * DAY, 2 * DAY))
    ts = start + np.cumsum(np.asarray(steps, dtype=np.int64))
    snap = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if n:
        nudge = draw(st.sampled_from([-1, 0, 1]))
        snap_to = draw(st.sampled_from([MINUTE, 5 * MINUTE, 3_600_000, DAY]))
        ts[snap] = (ts[snap] // snap_to) * snap_to + nudge
    ts = np.sort(ts).astype(np.int64)
    price_strategy = st.one_of(
        st.integers(1, 5).map(float),
        st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False),
    )
    price = np.asarray(draw(st.lists(price_strategy, min_size=n, max_size=n)), dtype=np.float64)
    volume_strategy = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False)
    volume = np.asarray(draw(st.lists(volume_strategy, min_size=n, max_size=n)), dtype=np.float64)
    return ts, price, volume


# ---------------------------------------------------------------------------------------------
# parse_timeframe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeframe", "seconds"),
    [("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600), ("4h", 14_400), ("1d", 86_400)],
)
def test_parse_timeframe_known_values(timeframe: str, seconds: int) -> None:
    assert parse_timeframe(timeframe) == seconds


def test_parse_timeframe_covers_exactly_timeframes() -> None:
    assert TIMEFRAMES == ("1m", "5m", "15m", "1h", "4h", "1d")
    assert [parse_timeframe(tf) for tf in TIMEFRAMES] == sorted(
        parse_timeframe(tf) for tf in TIMEFRAMES
    )


@pytest.mark.parametrize("bad", ["2m", "1M", "1H", "60", "", " 1m", "1w", "1min", None, 60])
def test_parse_timeframe_rejects_unknown(bad: object) -> None:
    with pytest.raises(ValueError, match="unknown timeframe") as info:
        parse_timeframe(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert all(tf in message for tf in TIMEFRAMES)


def test_aggregate_arrays_rejects_unknown_timeframe() -> None:
    with pytest.raises(ValueError, match="'3m'"):
        aggregate_arrays(np.array([1]), np.array([1.0]), np.array([1.0]), "3m")
    with pytest.raises(ValueError, match="'2h'"):
        aggregate_all(np.array([1]), np.array([1.0]), np.array([1.0]), ["1m", "2h"])
    with pytest.raises(ValueError, match="'1y'"):
        aggregate_to_timeframe([], "1y")
    with pytest.raises(ValueError, match="'7m'"):
        CandleBuilder("7m")


# ---------------------------------------------------------------------------------------------
# Boundaries (the user's contract), checked on every form
# ---------------------------------------------------------------------------------------------


def all_forms(timeframe: str, ts: list[int], price: list[float], volume: list[float]) -> list:
    """Candles of every form for the same ticks; asserts they agree and returns them."""
    ts_a = np.asarray(ts, dtype=np.int64)
    px_a = np.asarray(price, dtype=np.float64)
    vol_a = np.asarray(volume, dtype=np.float64)
    arrays = rows(aggregate_arrays(ts_a, px_a, vol_a, timeframe))
    assert list(aggregate_to_timeframe(tick_dicts(ts_a, px_a, vol_a), timeframe)) == arrays
    assert rows(aggregate_all(ts_a, px_a, vol_a, [timeframe])[timeframe]) == arrays
    assert builder_candles(timeframe, ts_a, px_a, vol_a) == arrays
    return arrays


def test_aggregate_tick_on_close_boundary_belongs_to_closing_candle() -> None:
    ts = [ms(2024, 3, 1, 9, 0), ms(2024, 3, 1, 9, 0, 0, 1000), ms(2024, 3, 1, 9, 5)]
    candles = all_forms("5m", ts, [10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert candles == [
        {
            "timestamp": ms(2024, 3, 1, 9, 0),
            "open": 10.0,
            "high": 10.0,
            "low": 10.0,
            "close": 10.0,
            "volume": 1.0,
            "trades": 1,
        },
        {
            "timestamp": ms(2024, 3, 1, 9, 5),
            "open": 11.0,
            "high": 12.0,
            "low": 11.0,
            "close": 12.0,
            "volume": 5.0,
            "trades": 2,
        },
    ]


def test_aggregate_tick_just_after_close_opens_next_candle() -> None:
    ts = [ms(2024, 3, 1, 9, 4, 59, 999_000), ms(2024, 3, 1, 9, 5), ms(2024, 3, 1, 9, 5, 0, 1000)]
    candles = all_forms("5m", ts, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert [(c["timestamp"], c["trades"]) for c in candles] == [
        (ms(2024, 3, 1, 9, 5), 2),
        (ms(2024, 3, 1, 9, 10), 1),
    ]


@pytest.mark.parametrize("timeframe", TIMEFRAMES)
def test_aggregate_close_times_are_epoch_aligned(timeframe: str) -> None:
    interval = INTERVAL_MS[timeframe]
    ts = [BASE + 1, BASE + interval, BASE + interval + 1, BASE + 7 * interval - 1]
    candles = all_forms(timeframe, ts, [1.0, 2.0, 3.0, 4.0], [1.0] * 4)
    assert [c["timestamp"] for c in candles] == [
        BASE + interval,
        BASE + 2 * interval,
        BASE + 7 * interval,
    ]
    assert all(c["timestamp"] % interval == 0 for c in candles)


def test_aggregate_daily_candle_closes_at_utc_midnight() -> None:
    ts = [ms(2024, 3, 1, 0, 0), ms(2024, 3, 1, 0, 0, 0, 1000), ms(2024, 3, 1, 23, 59, 59, 999_000)]
    candles = all_forms("1d", ts, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert [(c["timestamp"], c["trades"]) for c in candles] == [
        (ms(2024, 3, 1), 1),
        (ms(2024, 3, 2), 2),
    ]


def test_aggregate_four_hour_candles_close_on_epoch_multiples() -> None:
    ts = [ms(2024, 3, 1, 3, 59), ms(2024, 3, 1, 4, 0), ms(2024, 3, 1, 4, 0, 0, 1000)]
    candles = all_forms("4h", ts, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert [(c["timestamp"], c["trades"]) for c in candles] == [
        (ms(2024, 3, 1, 4), 2),
        (ms(2024, 3, 1, 8), 1),
    ]


def test_aggregate_gap_intervals_produce_no_candle() -> None:
    ts = [ms(2024, 3, 1, 9, 1), ms(2024, 3, 1, 9, 31), ms(2024, 3, 2, 9, 1)]
    candles = all_forms("5m", ts, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert [c["timestamp"] for c in candles] == [
        ms(2024, 3, 1, 9, 5),
        ms(2024, 3, 1, 9, 35),
        ms(2024, 3, 2, 9, 5),
    ]


def test_aggregate_duplicate_timestamps_keep_arrival_order() -> None:
    t = ms(2024, 3, 1, 9, 2)
    candles = all_forms("1m", [t, t, t, t], [5.0, 9.0, 1.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert candles == [
        {
            "timestamp": ms(2024, 3, 1, 9, 2),
            "open": 5.0,
            "high": 9.0,
            "low": 1.0,
            "close": 4.0,
            "volume": 10.0,
            "trades": 4,
        }
    ]


def test_aggregate_candle_types_are_python_int_and_float() -> None:
    (candle,) = all_forms("1m", [BASE + 5], [1.5], [2.0])
    assert type(candle["timestamp"]) is int
    assert type(candle["trades"]) is int
    assert all(type(candle[f]) is float for f in (*PRICE_FIELDS, "volume"))


# ---------------------------------------------------------------------------------------------
# Input rules
# ---------------------------------------------------------------------------------------------


def test_aggregate_arrays_rejects_unsorted_input() -> None:
    ts = np.array([BASE + 10, BASE + 5, BASE + 20], dtype=np.int64)
    px = np.ones(3)
    with pytest.raises(ValueError, match=r"sorted ascending.*argsort\(kind='stable'\)"):
        aggregate_arrays(ts, px, px, "1m")
    with pytest.raises(ValueError, match="sorted ascending"):
        aggregate_all(ts, px, px)
    with pytest.raises(ValueError, match="sorted"):
        list(aggregate_to_timeframe(tick_dicts(ts, px, px), "1m"))


def test_aggregate_arrays_rejects_descent_across_candles() -> None:
    # Sorted ends with a descent in the middle, crossing candles: the case a naive bound misses.
    ts = np.array([BASE, BASE + 10 * DAY, BASE + 5, BASE + 10 * DAY], dtype=np.int64)
    with pytest.raises(ValueError, match="sorted ascending"):
        aggregate_arrays(ts, np.ones(4), np.ones(4), "1m")


def test_aggregate_nb_guards_unsorted_direct_calls() -> None:
    ones = np.ones(3)
    for ts in ([BASE, BASE + 10 * DAY, BASE + 5], [BASE, BASE + 10 * DAY, BASE + 5 * DAY]):
        with pytest.raises(ValueError, match="sorted ascending"):
            aggregate_nb(np.array(ts, dtype=np.int64), ones, ones, MINUTE)


def test_aggregate_arrays_accepts_argsorted_input() -> None:
    ts = np.array([BASE + 70_000, BASE + 5, BASE + 5, BASE + 20], dtype=np.int64)
    px = np.array([4.0, 1.0, 2.0, 3.0])
    order = np.argsort(ts, kind="stable")
    result = aggregate_arrays(ts[order], px[order], np.ones(4)[order], "1m")
    assert result["open"].tolist() == [1.0, 4.0]
    assert result["close"].tolist() == [3.0, 4.0]


def test_aggregate_arrays_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="price has 2 values but ts_ms has 3"):
        aggregate_arrays(np.arange(3), np.ones(2), np.ones(3), "1m")
    with pytest.raises(ValueError, match="volume has 4 values"):
        aggregate_all(np.arange(3), np.ones(3), np.ones(4))


def test_aggregate_arrays_rejects_float_and_2d_timestamps() -> None:
    with pytest.raises(TypeError, match="integer epoch milliseconds"):
        aggregate_arrays(np.array([1.5, 2.5]), np.ones(2), np.ones(2), "1m")
    with pytest.raises(ValueError, match="one-dimensional"):
        aggregate_arrays(np.ones((2, 2), dtype=np.int64), np.ones(2), np.ones(2), "1m")
    with pytest.raises(TypeError):
        list(aggregate_to_timeframe([{"timestamp": 1.5, "price": 1.0, "volume": 1.0}], "1m"))


def test_aggregate_empty_input_gives_empty_arrays() -> None:
    empty = aggregate_arrays(np.array([], dtype=np.int64), np.array([]), np.array([]), "5m")
    assert {k: (v.dtype, v.shape) for k, v in empty.items()} == {
        "timestamp": (np.dtype(np.int64), (0,)),
        "open": (np.dtype(np.float64), (0,)),
        "high": (np.dtype(np.float64), (0,)),
        "low": (np.dtype(np.float64), (0,)),
        "close": (np.dtype(np.float64), (0,)),
        "volume": (np.dtype(np.float64), (0,)),
        "trades": (np.dtype(np.int64), (0,)),
    }
    everything = aggregate_all([], [], [])
    assert list(everything) == list(TIMEFRAMES)
    assert all(arr.size == 0 for candles in everything.values() for arr in candles.values())
    assert list(aggregate_to_timeframe(iter([]), "1h")) == []
    assert resample_candles(empty, "1h")["timestamp"].size == 0
    builder = CandleBuilder("1m")
    assert builder.add_many([], [], []) == []
    assert builder.current is None
    assert builder.flush(BASE) == []


def test_aggregate_to_timeframe_streams_lazily() -> None:
    consumed = []

    def source():
        for i in range(10_000_000):
            consumed.append(i)
            yield {"timestamp": BASE + i * MINUTE + 1, "price": 1.0, "volume": 1.0}

    stream = aggregate_to_timeframe(source(), "1m")
    first = next(stream)
    assert first["timestamp"] == BASE + MINUTE
    # The first candle is known as soon as the second tick arrives.
    assert len(consumed) == 2


# ---------------------------------------------------------------------------------------------
# aggregate_all and resample_candles
# ---------------------------------------------------------------------------------------------


def test_aggregate_all_keys_follow_given_order() -> None:
    ts, px, vol = random_ticks(5_000, seed=1)
    result = aggregate_all(ts, px, vol, ["1h", "1m", "1d", "1h"])
    assert list(result) == ["1h", "1m", "1d"]
    for tf, candles in result.items():
        assert_arrays_equal(candles, aggregate_arrays(ts, px, vol, tf), volume_rel=1e-12)


def test_resample_candles_rejects_non_multiple_source() -> None:
    candles = aggregate_arrays(*random_ticks(1_000, seed=2)[:3], "15m")
    with pytest.raises(ValueError, match="not a whole multiple"):
        resample_candles(candles, "5m", source_timeframe="15m")
    assert resample_candles(candles, "1h", source_timeframe="15m")["trades"].sum() == 1_000


def test_resample_candles_rejects_missing_field_and_unsorted() -> None:
    candles = aggregate_arrays(*random_ticks(1_000, seed=3)[:3], "1m")
    with pytest.raises(ValueError, match="trades"):
        resample_candles({k: v for k, v in candles.items() if k != "trades"}, "5m")
    shuffled = {k: v[::-1].copy() for k, v in candles.items()}
    with pytest.raises(ValueError, match="timestamp must be sorted ascending"):
        resample_candles(shuffled, "5m")


def test_resample_candles_merges_by_close_time() -> None:
    one_minute = {
        "timestamp": np.array([BASE + MINUTE, BASE + 5 * MINUTE, BASE + 6 * MINUTE]),
        "open": np.array([1.0, 2.0, 3.0]),
        "high": np.array([5.0, 9.0, 4.0]),
        "low": np.array([0.5, 1.5, 0.1]),
        "close": np.array([2.0, 3.0, 3.5]),
        "volume": np.array([1.0, 2.0, 4.0]),
        "trades": np.array([3, 4, 5]),
    }
    assert rows(resample_candles(one_minute, "5m")) == [
        {
            "timestamp": BASE + 5 * MINUTE,
            "open": 1.0,
            "high": 9.0,
            "low": 0.5,
            "close": 3.0,
            "volume": 3.0,
            "trades": 7,
        },
        {
            "timestamp": BASE + 10 * MINUTE,
            "open": 3.0,
            "high": 4.0,
            "low": 0.1,
            "close": 3.5,
            "volume": 4.0,
            "trades": 5,
        },
    ]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(data=ticks())
def test_aggregate_arrays_ohlc_invariants_and_conservation(data: tuple) -> None:
    ts, px, vol = data
    for tf in TIMEFRAMES:
        c = aggregate_arrays(ts, px, vol, tf)
        assert np.all(c["low"] <= c["open"])
        assert np.all(c["low"] <= c["close"])
        assert np.all(c["open"] <= c["high"])
        assert np.all(c["close"] <= c["high"])
        assert np.all(c["trades"] >= 1)
        assert np.all(np.diff(c["timestamp"]) > 0)
        assert np.all(c["timestamp"] % INTERVAL_MS[tf] == 0)
        assert int(c["trades"].sum()) == ts.size
        assert math.isclose(math.fsum(c["volume"]), math.fsum(vol), rel_tol=1e-9, abs_tol=1e-300)
        # Every tick lies in (close - I, close] of exactly the candle its index range maps to.
        ends = np.cumsum(c["trades"])
        starts = ends - c["trades"]
        for close_ms, lo, hi in zip(c["timestamp"], starts, ends, strict=True):
            assert np.all(ts[lo:hi] <= close_ms)
            assert np.all(ts[lo:hi] > close_ms - INTERVAL_MS[tf])


@HYPOTHESIS
@given(data=ticks())
def test_aggregate_arrays_matches_python_reference(data: tuple) -> None:
    ts, px, vol = data
    for tf in TIMEFRAMES:
        expected = reference_candles(ts.tolist(), px.tolist(), vol.tolist(), INTERVAL_MS[tf])
        assert rows(aggregate_arrays(ts, px, vol, tf)) == expected


@HYPOTHESIS
@given(data=ticks(), cuts=st.lists(st.integers(0, 250), max_size=6))
def test_aggregate_all_forms_produce_identical_candles(data: tuple, cuts: list[int]) -> None:
    ts, px, vol = data
    everything = aggregate_all(ts, px, vol)
    smallest = TIMEFRAMES[0]
    for tf in TIMEFRAMES:
        expected = aggregate_arrays(ts, px, vol, tf)
        expected_rows = rows(expected)
        assert list(aggregate_to_timeframe(tick_dicts(ts, px, vol), tf)) == expected_rows
        assert builder_candles(tf, ts, px, vol) == expected_rows
        # add_many over arbitrary batch cuts, then the final flush.
        builder = CandleBuilder(tf)
        batched = []
        bounds = [0, *sorted(min(c, ts.size) for c in cuts), ts.size]
        for lo, hi in itertools.pairwise(bounds):
            batched += builder.add_many(ts[lo:hi], px[lo:hi], vol[lo:hi])
        if builder.current is not None:
            batched += builder.flush(builder.current["timestamp"])
        assert batched == expected_rows
        # aggregate_all builds higher timeframes from candles: volume is summed in another order.
        assert_arrays_equal(everything[tf], expected, volume_rel=0.0 if tf == smallest else 1e-9)


@HYPOTHESIS
@given(data=ticks())
def test_resample_candles_chain_equals_direct(data: tuple) -> None:
    ts, px, vol = data
    direct = aggregate_arrays(ts, px, vol, "1h")
    one_minute = aggregate_arrays(ts, px, vol, "1m")
    via_1m = resample_candles(one_minute, "1h", source_timeframe="1m")
    via_5m = resample_candles(resample_candles(one_minute, "5m"), "1h")
    assert_arrays_equal(via_1m, direct, volume_rel=1e-9)
    assert_arrays_equal(via_5m, direct, volume_rel=1e-9)
    assert_arrays_equal(via_5m, via_1m, volume_rel=1e-9)
    daily = resample_candles(resample_candles(via_5m, "4h"), "1d")
    assert_arrays_equal(daily, aggregate_arrays(ts, px, vol, "1d"), volume_rel=1e-9)


@HYPOTHESIS
@given(data=ticks(min_size=2), cut=st.integers(1, 249))
def test_aggregate_arrays_closed_candles_ignore_later_ticks(data: tuple, cut: int) -> None:
    ts, px, vol = data
    cut = min(cut, ts.size - 1)
    for tf in TIMEFRAMES:
        full = rows(aggregate_arrays(ts, px, vol, tf))
        prefix = rows(aggregate_arrays(ts[:cut], px[:cut], vol[:cut], tf))
        # All but the prefix's last candle are final; the later ticks cannot change them.
        assert prefix[:-1] == full[: len(prefix) - 1]


@HYPOTHESIS
@given(data=ticks(min_size=1))
def test_aggregate_arrays_matches_pandas_resample(data: tuple) -> None:
    ts, px, vol = data
    for tf in TIMEFRAMES:
        expected = pandas_candles(ts, px, vol, tf)
        assert_arrays_equal(aggregate_arrays(ts, px, vol, tf), expected, volume_rel=1e-9)


def test_aggregate_all_matches_pandas_on_200k_ticks() -> None:
    ts, px, vol = random_ticks(200_000, seed=42)
    assert np.any(np.diff(ts) == 0)
    assert np.any(ts % MINUTE == 0)
    everything = aggregate_all(ts, px, vol)
    for tf in TIMEFRAMES:
        expected = pandas_candles(ts, px, vol, tf)
        assert expected["timestamp"].size > 0
        assert_arrays_equal(everything[tf], expected, volume_rel=1e-9)
        assert_arrays_equal(aggregate_arrays(ts, px, vol, tf), expected, volume_rel=1e-9)


@pytest.mark.parametrize("timeframe", ["4h", "1d"])
def test_pandas_reference_bins_are_epoch_aligned(timeframe: str) -> None:
    # The reference itself must use epoch/UTC-midnight bins, or agreeing with it proves nothing.
    ts = np.array([BASE + 7 * 3_600_000 + 1, BASE + 2 * DAY + 1], dtype=np.int64)
    got = pandas_candles(ts, np.ones(2), np.ones(2), timeframe)
    interval = INTERVAL_MS[timeframe]
    assert got["timestamp"].tolist() == [-(-int(t) // interval) * interval for t in ts]


# ---------------------------------------------------------------------------------------------
# CandleBuilder
# ---------------------------------------------------------------------------------------------


def test_candle_builder_add_returns_candle_closed_by_later_tick() -> None:
    builder = CandleBuilder("1m")
    assert builder.add(BASE + 1, 10.0, 1.0) == []
    assert builder.add(BASE + MINUTE, 12.0, 2.0) == []
    assert builder.last_closed_ms is None
    closed = builder.add(BASE + MINUTE + 1, 11.0, 3.0)
    assert closed == [
        {
            "timestamp": BASE + MINUTE,
            "open": 10.0,
            "high": 12.0,
            "low": 10.0,
            "close": 12.0,
            "volume": 3.0,
            "trades": 2,
        }
    ]
    assert builder.last_closed_ms == BASE + MINUTE
    assert builder.current == {
        "timestamp": BASE + 2 * MINUTE,
        "open": 11.0,
        "high": 11.0,
        "low": 11.0,
        "close": 11.0,
        "volume": 3.0,
        "trades": 1,
    }


def test_candle_builder_current_is_a_copy() -> None:
    builder = CandleBuilder("5m")
    assert builder.current is None
    builder.add(BASE + 1, 10.0, 1.0)
    snapshot = builder.current
    snapshot["high"] = 999.0
    builder.add(BASE + 2, 9.0, 1.0)
    assert builder.current["high"] == 10.0
    assert builder.current["low"] == 9.0
    assert snapshot["trades"] == 1


def test_candle_builder_flush_closes_only_when_close_time_passed() -> None:
    builder = CandleBuilder("5m")
    builder.add(BASE + 1, 10.0, 1.0)
    close_ms = BASE + 5 * MINUTE
    assert builder.flush(close_ms - 1) == []
    assert builder.current is not None
    (closed,) = builder.flush(close_ms)
    assert closed["timestamp"] == close_ms
    assert builder.current is None
    assert builder.last_closed_ms == close_ms
    assert builder.flush(close_ms + DAY) == []
    # The next tick opens a new candle after the gap, with no empty candles in between.
    assert builder.add(close_ms + DAY + 1, 11.0, 1.0) == []
    assert builder.current["timestamp"] == close_ms + DAY + 5 * MINUTE


def test_candle_builder_rejects_late_tick_and_keeps_state() -> None:
    builder = CandleBuilder("1m")
    builder.add(BASE + MINUTE + 5, 10.0, 1.0)
    before = builder.current
    with pytest.raises(ValueError, match="late tick"):
        builder.add(BASE + MINUTE, 1.0, 1.0)  # closes at BASE + MINUTE, before the current one
    with pytest.raises(ValueError, match="late tick"):
        builder.add_many(np.array([BASE + MINUTE]), np.ones(1), np.ones(1))
    assert builder.current == before
    # Older within the current candle is not late: arrival order decides open and close.
    assert builder.add(BASE + MINUTE + 1, 8.0, 1.0) == []
    assert builder.current["close"] == 8.0


def test_candle_builder_rejects_tick_for_flushed_candle() -> None:
    builder = CandleBuilder("1m")
    builder.add(BASE + 10, 10.0, 1.0)
    builder.flush(BASE + MINUTE)
    with pytest.raises(ValueError, match="already closed"):
        builder.add(BASE + MINUTE, 1.0, 1.0)
    with pytest.raises(ValueError, match="already closed"):
        builder.add_many(np.array([BASE + 20]), np.ones(1), np.ones(1))
    assert builder.current is None
    assert builder.add(BASE + MINUTE + 1, 1.0, 1.0) == []


def test_candle_builder_resumes_after_last_closed_candle() -> None:
    builder = CandleBuilder("5m", last_closed_ms=BASE + 5 * MINUTE)
    assert builder.last_closed_ms == BASE + 5 * MINUTE
    assert builder.current is None
    with pytest.raises(ValueError, match="already closed"):
        builder.add(BASE + 5 * MINUTE, 1.0, 1.0)
    with pytest.raises(ValueError, match="already closed"):
        builder.add_many(np.array([BASE + 1]), np.ones(1), np.ones(1))
    assert builder.add(BASE + 5 * MINUTE + 1, 2.0, 1.0) == []
    assert builder.current["timestamp"] == BASE + 10 * MINUTE


def test_candle_builder_add_many_rejects_late_batch_whole() -> None:
    builder = CandleBuilder("1m")
    builder.add_many(np.array([BASE + 1, BASE + MINUTE + 1]), np.array([1.0, 2.0]), np.ones(2))
    before = (builder.current, builder.last_closed_ms)
    batch_ts = np.array([BASE + 2 * MINUTE + 1, BASE + 3 * MINUTE + 1, BASE + MINUTE])
    with pytest.raises(ValueError, match=r"late tick.*rejected whole"):
        builder.add_many(batch_ts, np.ones(3), np.ones(3))
    assert (builder.current, builder.last_closed_ms) == before


def test_candle_builder_add_many_mixes_with_add() -> None:
    ts, px, vol = random_ticks(20_000, seed=7)
    expected = rows(aggregate_arrays(ts, px, vol, "1m"))
    builder = CandleBuilder("1m")
    got = []
    for lo in range(0, ts.size, 3_000):
        got += builder.add_many(ts[lo : lo + 1_000], px[lo : lo + 1_000], vol[lo : lo + 1_000])
        for i in range(lo + 1_000, min(lo + 3_000, ts.size)):
            got += builder.add(int(ts[i]), float(px[i]), float(vol[i]))
    got += builder.flush(builder.current["timestamp"])
    assert got == expected


def test_candle_builder_accepts_numpy_scalars_and_rejects_float_time() -> None:
    builder = CandleBuilder("1m")
    assert builder.add(np.int64(BASE + 1), np.float64(2.0), np.float32(1.0)) == []
    assert type(builder.current["timestamp"]) is int
    with pytest.raises(TypeError):
        builder.add(float(BASE + 2), 1.0, 1.0)
