"""Backfill, gap detection and refill, through the command, the service and a real Celery worker."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from marketdata.aggregation import aggregate_arrays
from marketdata.backfill import Gap, backfill, find_gaps, refill_gaps
from marketdata.models import Candle, Exchange
from marketdata.providers.simulated import SimulatedProvider
from marketdata.services import candles_arrays, datetime_to_ms, instrument_ensure, ms_to_datetime
from marketdata.tasks import refill_gaps as refill_gaps_task

MIN = 60_000
NOW_MS = (int(time.time() * 1000) // 3_600_000) * 3_600_000  # this hour's start
START = NOW_MS - 3 * 3_600_000


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(
        ccxt_id="simulated", name="Simulated", kind="simulated", options={"seed": 11}
    )
    return instrument_ensure(exchange_id="simulated", symbol="ETH/USDT")


def expected_minutes(start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
    trades = SimulatedProvider(seed=11).trades_between("ETH/USDT", start_ms, end_ms)
    return aggregate_arrays(
        np.array([t["timestamp"] for t in trades], dtype=np.int64),
        np.array([t["price"] for t in trades], dtype=np.float64),
        np.array([t["amount"] for t in trades], dtype=np.float64),
        "1m",
    )


def stored(instrument, timeframe: str = "1m") -> dict[str, np.ndarray]:
    return candles_arrays(instrument_id=instrument.pk, timeframe=timeframe)


def test_backfill_command_stores_close_stamped_candles_and_resumes(instrument):
    since, until = START, START + 90 * MIN
    call_command("backfill", "simulated", "ETH/USDT", "--since", str(since), "--until", str(until))
    got = stored(instrument)
    want = expected_minutes(since, until)
    # Close-time stamps: the first candle closes one minute after `since`.
    assert got["timestamp"][0] == since + MIN
    assert got["timestamp"].tolist() == want["timestamp"].tolist()
    np.testing.assert_allclose(got["close"], want["close"], rtol=1e-12)
    assert set(Candle.objects.filter(timeframe="1m").values_list("source", flat=True)) == {
        "exchange"
    }

    # "Interrupted" then resumed over a longer range: it continues after the newest candle and
    # stores every minute once.
    call_command(
        "backfill", "simulated", "ETH/USDT", "--since", str(since), "--until", str(until + 60 * MIN)
    )
    resumed = stored(instrument)
    assert (
        resumed["timestamp"].tolist()
        == expected_minutes(since, until + 60 * MIN)["timestamp"].tolist()
    )
    assert len(set(resumed["timestamp"].tolist())) == len(resumed["timestamp"])

    # Higher timeframes are rebuilt from the imported minutes.
    hours = stored(instrument, "1h")
    hour_close = since + 60 * MIN
    minutes = resumed["timestamp"]
    in_hour = (minutes > hour_close - 60 * MIN) & (minutes <= hour_close)
    assert hour_close in hours["timestamp"].tolist()
    idx = hours["timestamp"].tolist().index(hour_close)
    assert hours["high"][idx] == resumed["high"][in_hour].max()
    assert hours["open"][idx] == resumed["open"][in_hour][0]


def test_backfill_command_refuses_unknown_instrument_and_bad_times(instrument):
    with pytest.raises(CommandError, match="unknown instrument simulated:DOGE/USDT"):
        call_command("backfill", "simulated", "DOGE/USDT", "--since", "2026-01-01")
    with pytest.raises(CommandError, match="not a time"):
        call_command("backfill", "simulated", "ETH/USDT", "--since", "yesterday")
    with pytest.raises(CommandError, match="--until must be after --since"):
        call_command(
            "backfill", "simulated", "ETH/USDT", "--since", "2026-01-02", "--until", "2026-01-01"
        )


def test_gaps_are_found_and_refilled_exactly(instrument):
    provider = SimulatedProvider(seed=11)
    end = START + 120 * MIN
    asyncio.run(
        backfill(
            provider,
            instrument_id=instrument.pk,
            symbol="ETH/USDT",
            timeframe="1m",
            since_ms=START,
            until_ms=end,
        )
    )
    complete = stored(instrument)
    hole = [START + k * MIN for k in (10, 11, 12, 50)]
    Candle.objects.filter(timeframe="1m", close_time__in=[ms_to_datetime(t) for t in hole]).delete()

    gaps = find_gaps(instrument_id=instrument.pk, timeframe="1m", start_ms=START, end_ms=end)
    assert gaps == [
        Gap(START + 9 * MIN, START + 13 * MIN, 3),
        Gap(START + 49 * MIN, START + 51 * MIN, 1),
    ]

    filled = asyncio.run(
        refill_gaps(
            provider, instrument_id=instrument.pk, symbol="ETH/USDT", start_ms=START, end_ms=end
        )
    )
    assert filled == 4
    after = stored(instrument)
    assert after["timestamp"].tolist() == complete["timestamp"].tolist()
    np.testing.assert_array_equal(after["close"], complete["close"])
    assert find_gaps(instrument_id=instrument.pk, timeframe="1m", start_ms=START, end_ms=end) == []


def test_find_gaps_reports_a_missing_tail_and_an_empty_range(instrument):
    gaps = find_gaps(
        instrument_id=instrument.pk, timeframe="5m", start_ms=START, end_ms=START + 30 * MIN
    )
    assert gaps == [Gap(START, START + 35 * MIN, 6)]


@pytest.mark.django_db(transaction=True)
def test_refill_gaps_task_runs_in_a_real_worker(instrument, celery_worker):
    provider = SimulatedProvider(seed=11)
    end = (int(time.time() * 1000) // MIN) * MIN - 2 * MIN
    asyncio.run(
        backfill(
            provider,
            instrument_id=instrument.pk,
            symbol="ETH/USDT",
            timeframe="1m",
            since_ms=end - 90 * MIN,
            until_ms=end,
        )
    )
    missing = [end - 30 * MIN, end - 29 * MIN]
    Candle.objects.filter(
        timeframe="1m", close_time__in=[ms_to_datetime(t) for t in missing]
    ).delete()

    result = refill_gaps_task.delay(hours=1).get(timeout=120)
    # The two holes, plus the newest minute(s) if they closed after the backfill above.
    assert list(result) == ["simulated:ETH/USDT"]
    assert 2 <= result["simulated:ETH/USDT"] <= 4
    closes = {
        datetime_to_ms(c)
        for c in Candle.objects.filter(timeframe="1m").values_list("close_time", flat=True)
    }
    assert set(missing) <= closes
