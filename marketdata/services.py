"""Writes of the marketdata app: raw ticks, rejects, candles, collection status."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from marketdata.aggregation import TIMEFRAMES, parse_timeframe, resample_candles
from marketdata.models import Candle, CollectionStatus, Instrument, RawTick, RejectedTick

CANDLE_FIELDS = ("open", "high", "low", "close", "volume", "trades", "source")


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def to_decimal(value: float) -> Decimal:
    """Kernel float -> model Decimal, through its shortest repr (1.1 stays 1.1)."""
    return Decimal(repr(float(value)))


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of a raw payload: NaN/inf and unknown types become strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class TickRow:
    instrument_id: int
    trade_id: str | None
    time: datetime
    price: Decimal
    amount: Decimal
    side: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class RejectRow:
    exchange: str
    symbol: str
    instrument_id: int | None
    payload: Any
    reason: str
    received_at: datetime


_COPY_COLUMNS = "instrument_id, trade_id, time, price, amount, side, received_at"


def ticks_store(rows: Sequence[TickRow]) -> list[TickRow]:
    """Store raw ticks; return the rows refused as duplicates of a stored (instrument, trade id).

    PostgreSQL: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING. SQLite:
    one query for the ids already stored, then ``bulk_create``.
    """
    if not rows:
        return []
    if connection.vendor == "postgresql":
        return _ticks_store_copy(rows)
    return _ticks_store_bulk(rows)


_COPY_TYPES = ["int8", "varchar", "timestamptz", "numeric", "numeric", "varchar", "timestamptz"]


def _copy_rows(cursor, table: str, rows: Sequence[TickRow]) -> None:
    # Binary COPY: psycopg's C dumpers, no text formatting and parsing of every value.
    with cursor.cursor.copy(f"COPY {table} ({_COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        for r in rows:
            copy.write_row(
                (r.instrument_id, r.trade_id, r.time, r.price, r.amount, r.side, r.received_at)
            )


def _ticks_store_copy(rows: Sequence[TickRow]) -> list[TickRow]:
    """COPY straight into the table; if a row repeats a stored trade id (the unique index says
    so), undo and go through a staging table with ON CONFLICT DO NOTHING, which names them.

    The collector already refuses repeats it can see, so the direct path is the usual one.
    """
    table = RawTick._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        try:
            with transaction.atomic():  # savepoint: a unique violation undoes only this COPY
                _copy_rows(cursor, table, rows)
            return []
        except (IntegrityError, psycopg.IntegrityError):
            pass
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS rawtick_incoming "
            "(instrument_id bigint, trade_id varchar(64), time timestamptz, price numeric, "
            "amount numeric, side varchar(4), received_at timestamptz) ON COMMIT DELETE ROWS"
        )
        _copy_rows(cursor, "rawtick_incoming", rows)
        cursor.execute(
            f"INSERT INTO {table} ({_COPY_COLUMNS}) "  # noqa: S608 - our own table name
            f"SELECT {_COPY_COLUMNS} FROM rawtick_incoming "
            "ON CONFLICT (instrument_id, trade_id) WHERE trade_id IS NOT NULL DO NOTHING "
            "RETURNING instrument_id, trade_id"
        )
        inserted = {(i, t) for i, t in cursor.fetchall() if t is not None}
    duplicates = []
    for r in rows:
        key = (r.instrument_id, r.trade_id)
        if r.trade_id is None:
            continue
        if key in inserted:
            inserted.discard(key)  # its first row was stored; a repeat in the batch was not
        else:
            duplicates.append(r)
    return duplicates


def _ticks_store_bulk(rows: Sequence[TickRow]) -> list[TickRow]:
    with transaction.atomic():
        by_instrument: dict[int, set[str]] = {}
        for r in rows:
            if r.trade_id is not None:
                by_instrument.setdefault(r.instrument_id, set()).add(r.trade_id)
        stored: set[tuple[int, str]] = set()
        for instrument_id, ids in by_instrument.items():
            stored.update(
                (instrument_id, t)
                for t in RawTick.objects.filter(
                    instrument_id=instrument_id, trade_id__in=ids
                ).values_list("trade_id", flat=True)
            )
        fresh, duplicates, seen = [], [], set(stored)
        for r in rows:
            key = (r.instrument_id, r.trade_id)
            if r.trade_id is not None and key in seen:
                duplicates.append(r)
                continue
            seen.add(key)
            fresh.append(RawTick(**{f: getattr(r, f) for f in TickRow.__slots__}))
        RawTick.objects.bulk_create(fresh, batch_size=2000)
    return duplicates


def rejects_store(rows: Iterable[RejectRow]) -> int:
    objs = [
        RejectedTick(
            exchange=r.exchange[:50],
            symbol=(r.symbol or "")[:64],
            instrument_id=r.instrument_id,
            payload=jsonable(r.payload),
            reason=r.reason[:200],
            received_at=r.received_at,
        )
        for r in rows
    ]
    RejectedTick.objects.bulk_create(objs, batch_size=2000)
    return len(objs)


def candles_upsert(
    *,
    instrument_id: int,
    timeframe: str,
    candles: dict[str, np.ndarray] | Sequence[dict[str, Any]],
    source: str = Candle.Source.TICKS,
    only_missing: bool = False,
) -> int:
    """Insert or update candles (idempotent on instrument, timeframe, close time).

    ``candles`` is a dict of arrays (``aggregation`` output) or a list of candle dicts, with
    ``timestamp`` the close time in epoch ms. ``only_missing`` keeps candles already stored
    (a backfill never overwrites what was built from our own ticks).
    """
    parse_timeframe(timeframe)
    if isinstance(candles, dict):
        n = len(candles["timestamp"])
        items = [{k: candles[k][i] for k in candles} for i in range(n)]
    else:
        items = list(candles)
    if not items:
        return 0
    objs = [
        Candle(
            instrument_id=instrument_id,
            timeframe=timeframe,
            close_time=ms_to_datetime(int(c["timestamp"])),
            open=to_decimal(c["open"]),
            high=to_decimal(c["high"]),
            low=to_decimal(c["low"]),
            close=to_decimal(c["close"]),
            volume=to_decimal(c["volume"]),
            trades=int(c.get("trades", 0) or 0),
            source=source,
        )
        for c in items
    ]
    if only_missing:
        Candle.objects.bulk_create(objs, batch_size=2000, ignore_conflicts=True)
    else:
        Candle.objects.bulk_create(
            objs,
            batch_size=2000,
            update_conflicts=True,
            unique_fields=["instrument", "timeframe", "close_time"],
            update_fields=[*CANDLE_FIELDS, "updated_at"],
        )
    return len(objs)


def candles_arrays(
    *, instrument_id: int, timeframe: str, start_ms: int | None = None, end_ms: int | None = None
) -> dict[str, np.ndarray]:
    """Stored candles with close time in (start_ms, end_ms] as float/int arrays, ascending."""
    qs = Candle.objects.filter(instrument_id=instrument_id, timeframe=timeframe)
    if start_ms is not None:
        qs = qs.filter(close_time__gt=ms_to_datetime(start_ms))
    if end_ms is not None:
        qs = qs.filter(close_time__lte=ms_to_datetime(end_ms))
    rows = list(
        qs.order_by("close_time").values_list(
            "close_time", "open", "high", "low", "close", "volume", "trades"
        )
    )
    return {
        "timestamp": np.array([datetime_to_ms(r[0]) for r in rows], dtype=np.int64),
        "open": np.array([float(r[1]) for r in rows], dtype=np.float64),
        "high": np.array([float(r[2]) for r in rows], dtype=np.float64),
        "low": np.array([float(r[3]) for r in rows], dtype=np.float64),
        "close": np.array([float(r[4]) for r in rows], dtype=np.float64),
        "volume": np.array([float(r[5]) for r in rows], dtype=np.float64),
        "trades": np.array([r[6] for r in rows], dtype=np.int64),
    }


def candles_rebuild_higher(
    *, instrument: Instrument, start_ms: int, end_ms: int, final_until_ms: int
) -> dict[str, dict[str, np.ndarray]]:
    """Recompute every higher-timeframe candle of ``instrument`` whose interval overlaps
    (start_ms, end_ms], from the stored 1m candles. Returns the candles written per timeframe.

    Only final candles are written: those closing at or before ``final_until_ms`` (the close of
    the newest 1m candle known to be complete). An unfinished higher candle never reaches the
    table, so nothing that reads candles can see one.
    """
    written: dict[str, dict[str, np.ndarray]] = {}
    bounds: dict[str, tuple[int, int]] = {}
    for timeframe in instrument.timeframes:
        if timeframe == "1m":
            continue
        interval = parse_timeframe(timeframe) * 1000
        lo = (start_ms // interval) * interval  # open of the first affected higher candle
        hi = -(-end_ms // interval) * interval  # close of the last affected higher candle
        bounds[timeframe] = (lo, hi)
    if not bounds:
        return written
    # One query covers every timeframe's range; each takes its slice.
    minutes = candles_arrays(
        instrument_id=instrument.pk,
        timeframe="1m",
        start_ms=min(lo for lo, _ in bounds.values()),
        end_ms=max(hi for _, hi in bounds.values()),
    )
    for timeframe, (lo, hi) in bounds.items():
        inside = (minutes["timestamp"] > lo) & (minutes["timestamp"] <= hi)
        if not inside.any():
            continue
        higher = resample_candles({k: v[inside] for k, v in minutes.items()}, timeframe)
        final = higher["timestamp"] <= final_until_ms
        higher = {k: v[final] for k, v in higher.items()}
        if len(higher["timestamp"]) == 0:
            continue
        candles_upsert(instrument_id=instrument.pk, timeframe=timeframe, candles=higher)
        written[timeframe] = higher
    return written


def status_record(
    *,
    instrument_id: int,
    ticks: int = 0,
    rejects: int = 0,
    last_tick_at: datetime | None = None,
    last_candle_at: datetime | None = None,
    state: str | None = None,
    error: str | None = None,
) -> None:
    """Add counts and move the collection status of one instrument forward."""
    now = timezone.now()
    updates: dict[str, Any] = {
        "ticks_count": F("ticks_count") + ticks,
        "rejects_count": F("rejects_count") + rejects,
        "heartbeat_at": now,
    }
    if last_tick_at is not None:
        updates["last_tick_at"] = last_tick_at
    if last_candle_at is not None:
        updates["last_candle_at"] = last_candle_at
    if state is not None:
        updates["state"] = state
    if error is not None:
        updates["last_error"] = error[:2000]
        updates["last_error_at"] = now
    if not CollectionStatus.objects.filter(instrument_id=instrument_id).update(**updates):
        # First report for this instrument (one extra query, once).
        CollectionStatus.objects.get_or_create(instrument_id=instrument_id)
        CollectionStatus.objects.filter(instrument_id=instrument_id).update(**updates)


def instrument_ensure(
    *, exchange_id: str, symbol: str, timeframes: Sequence[str] = TIMEFRAMES
) -> Instrument:
    """Get or create the instrument ``symbol`` (``BASE/QUOTE[:SETTLE]``) on an existing exchange."""
    from marketdata.models import Exchange

    exchange = Exchange.objects.get(ccxt_id=exchange_id)
    base, _, rest = symbol.partition("/")
    quote = rest.split(":", 1)[0]
    if not base or not quote:
        raise ValueError(f"symbol {symbol!r} is not of the form BASE/QUOTE")
    instrument, _ = Instrument.objects.get_or_create(
        exchange=exchange,
        symbol=symbol,
        defaults={"base": base, "quote": quote, "timeframes": list(timeframes)},
    )
    return instrument


def json_candle(candle: dict[str, Any]) -> dict[str, Any]:
    """A candle dict with JSON-native values, for events."""
    return {
        "timestamp": int(candle["timestamp"]),
        **{k: float(candle[k]) for k in ("open", "high", "low", "close", "volume")},
        "trades": int(candle.get("trades", 0) or 0),
    }
