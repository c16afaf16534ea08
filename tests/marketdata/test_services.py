"""Raw-tick storage (COPY on PostgreSQL, bulk_create on SQLite) and candle upserts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from marketdata.models import Candle, Exchange, RawTick
from marketdata.services import TickRow, candles_upsert, instrument_ensure, ticks_store


@pytest.fixture
def instrument(db):
    Exchange.objects.create(ccxt_id="x", name="X", kind="ccxt")
    return instrument_ensure(exchange_id="x", symbol="BTC/USDT")


def rows(instrument, ids, start=0):
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    return [
        TickRow(
            instrument_id=instrument.pk,
            trade_id=None if i is None else str(i),
            time=t0 + timedelta(milliseconds=start + n),
            price=Decimal("60123.45678901"),
            amount=Decimal("0.00000001"),
            side="buy",
            received_at=t0,
        )
        for n, i in enumerate(ids)
    ]


def test_ticks_store_keeps_values_exactly(instrument):
    assert ticks_store(rows(instrument, [1, 2, None])) == []
    stored = list(RawTick.objects.order_by("time").values_list("trade_id", "price", "amount"))
    # Exchange precision survives (SQLite keeps 15 significant digits, PostgreSQL all 38).
    assert stored[0] == ("1", Decimal("60123.45678901"), Decimal("0.00000001"))
    assert [s[0] for s in stored] == ["1", "2", None]


def test_ticks_store_names_duplicates_and_stores_the_rest(instrument):
    ticks_store(rows(instrument, [1, 2, 3]))
    duplicates = ticks_store(rows(instrument, [3, 4, None, 2, 5], start=100))
    assert sorted(d.trade_id for d in duplicates) == ["2", "3"]
    assert sorted(RawTick.objects.exclude(trade_id=None).values_list("trade_id", flat=True)) == [
        "1", "2", "3", "4", "5",
    ]  # fmt: skip
    assert RawTick.objects.filter(trade_id=None).count() == 1
    # A batch repeating itself stores each id once.
    assert [d.trade_id for d in ticks_store(rows(instrument, [6, 6], start=200))] == ["6"]


def test_candles_upsert_is_idempotent_and_only_missing_keeps_ours(instrument):
    candle = {"timestamp": 1_780_000_020_000, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
              "volume": 3.0, "trades": 4}  # fmt: skip
    candles_upsert(instrument_id=instrument.pk, timeframe="1m", candles=[candle])
    candles_upsert(instrument_id=instrument.pk, timeframe="1m", candles=[{**candle, "close": 1.75}])
    assert Candle.objects.get().close == Decimal("1.75")
    candles_upsert(instrument_id=instrument.pk, timeframe="1m", source="exchange",
                   candles=[{**candle, "close": 9.0}], only_missing=True)  # fmt: skip
    stored = Candle.objects.get()
    assert (stored.close, stored.source) == (Decimal("1.75"), "ticks")


def test_candles_upsert_refuses_unknown_timeframe(instrument):
    with pytest.raises(ValueError, match="2m"):
        candles_upsert(instrument_id=instrument.pk, timeframe="2m", candles=[])
