"""Read paths of the marketdata app."""

from __future__ import annotations

import operator
from datetime import datetime, timedelta
from decimal import Decimal
from functools import reduce
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from marketdata.aggregation import TIMEFRAMES
from marketdata.models import Candle, CollectionStatus, Instrument, RawTick, RejectedTick


def collection_overview() -> list[dict[str, Any]]:
    """Collection status of every active instrument: lag, heartbeat age, counts, last error."""
    now = timezone.now()
    statuses = {
        s.instrument_id: s
        for s in CollectionStatus.objects.filter(instrument__in=Instrument.objects.active())
    }
    rows = []
    for instrument in Instrument.objects.active().select_related("exchange"):
        status = statuses.get(instrument.pk)
        rows.append(
            {
                "instrument": str(instrument),
                "state": status.state if status else CollectionStatus.State.STOPPED,
                "lag_s": (now - status.last_tick_at).total_seconds()
                if status and status.last_tick_at
                else None,
                "heartbeat_age_s": (now - status.heartbeat_at).total_seconds()
                if status and status.heartbeat_at
                else None,
                "ticks": status.ticks_count if status else 0,
                "rejects": status.rejects_count if status else 0,
                "last_error": status.last_error if status else "",
            }
        )
    return rows


def candles_frame(
    *,
    instrument_id: int,
    timeframe: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Stored candles as an OHLCV DataFrame: lowercase float columns ``open high low close
    volume`` and a UTC DatetimeIndex of close times, with close time in [start, end]. One query."""
    qs = Candle.objects.filter(instrument_id=instrument_id, timeframe=timeframe)
    if start is not None:
        qs = qs.filter(close_time__gte=start)
    if end is not None:
        qs = qs.filter(close_time__lte=end)
    rows = list(
        qs.order_by("close_time").values_list(
            "close_time", "open", "high", "low", "close", "volume"
        )
    )
    index = pd.DatetimeIndex([r[0] for r in rows], tz="UTC", name="close_time")
    values = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float64).reshape(-1, 5)
    return pd.DataFrame(values, index=index, columns=["open", "high", "low", "close", "volume"])


# --- pages -----------------------------------------------------------------------------------

MINUTE_MS = 60_000


def _status_of(instrument: Instrument) -> CollectionStatus | None:
    # A reverse one-to-one raises when the row is missing (a never-collected instrument).
    try:
        return instrument.status
    except CollectionStatus.DoesNotExist:
        return None


def market_list(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every instrument with its collection state, last price (close of the newest 1m candle),
    24 h change and last tick; one query (index-backed subqueries per instrument).

    The 24 h change compares the last price with the close of the newest 1m candle at or before
    ``now - 24 h``; when the history is shorter, with the open of the oldest candle since then.
    """
    now = now or timezone.now()
    day_ago = now - timedelta(hours=24)
    minutes = Candle.objects.filter(instrument=OuterRef("pk"), timeframe="1m")
    newest = minutes.order_by("-close_time")
    instruments = (
        Instrument.objects.select_related("exchange", "status")
        .annotate(
            last_price=Subquery(newest.values("close")[:1]),
            last_candle_at=Subquery(newest.values("close_time")[:1]),
            reference_price=Coalesce(
                Subquery(
                    minutes.filter(close_time__lte=day_ago)
                    .order_by("-close_time")
                    .values("close")[:1]
                ),
                Subquery(
                    minutes.filter(close_time__gt=day_ago).order_by("close_time").values("open")[:1]
                ),
            ),
        )
        .order_by("exchange__ccxt_id", "symbol")
    )
    rows = []
    for instrument in instruments:
        status = _status_of(instrument)
        last, reference = instrument.last_price, instrument.reference_price
        change = None
        if last is not None and reference:
            change = (Decimal(last) - Decimal(reference)) / Decimal(reference) * 100
        last_tick_at = status.last_tick_at if status else None
        rows.append(
            {
                "instrument": instrument,
                "state": status.state if status else CollectionStatus.State.STOPPED,
                "last_price": last,
                "last_candle_at": instrument.last_candle_at,
                "change_pct": change,
                "last_tick_at": last_tick_at,
                "tick_age_s": (now - last_tick_at).total_seconds() if last_tick_at else None,
            }
        )
    return rows


def market_detail(*, instrument: Instrument) -> dict[str, Any]:
    """What the market page renders before its stream connects: the timeframes the instrument
    builds (in the platform's order), its WebSocket path and its collection status."""
    built = set(instrument.timeframes or ["1m"])
    status = _status_of(instrument)
    return {
        "timeframes": [tf for tf in TIMEFRAMES if tf in built],
        # The symbol percent-encoded exactly as the page script's encodeURIComponent writes it
        # (``BTC/USDT`` -> ``BTC%2FUSDT``); the consumer accepts that form.
        "ws_path": "/ws/market/" + quote(instrument.symbol, safe="!~*'()"),
        "status": status,
    }


def _last_closed_minute_ms(now: datetime) -> int:
    # As the refill task: the newest minute whose close time is a full minute behind ``now``,
    # so a candle the collector has not flushed yet does not show as a gap.
    return int(now.timestamp() * 1000) // MINUTE_MS * MINUTE_MS - MINUTE_MS


def data_status(
    *,
    now: datetime | None = None,
    window_hours: int = 24,
    gaps_shown: int = 10,
    rejects_shown: int = 5,
) -> dict[str, Any]:
    """The collection health of every active instrument for the data-status page.

    Per instrument, on top of ``collection_overview`` (state, tick lag, counters, last error):
    the lag of the newest closed 1m candle; the 1m candles expected over the last
    ``window_hours`` against those stored, with the missing runs as ``backfill.find_gaps`` (the
    refill task's own detector) reports them, newest first, each with the raw ticks stored in it
    (ticks without a candle are lost aggregation; no tick means no trade or no collection, which
    the exchange's history tells apart); the rejects of the window and the latest of them.
    """
    from marketdata.backfill import find_gaps

    now = now or timezone.now()
    end_ms = _last_closed_minute_ms(now)
    start_ms = end_ms - window_hours * 3_600_000
    window_start = now - timedelta(hours=window_hours)
    overview = {row["instrument"]: row for row in collection_overview()}
    instruments = list(
        Instrument.objects.active()
        .select_related("exchange", "status")
        .annotate(
            last_candle_at=Subquery(
                Candle.objects.filter(instrument=OuterRef("pk"), timeframe="1m")
                .order_by("-close_time")
                .values("close_time")[:1]
            )
        )
        .order_by("exchange__ccxt_id", "symbol")
    )
    ids = [i.pk for i in instruments]
    reject_counts = dict(
        RejectedTick.objects.filter(instrument_id__in=ids, received_at__gte=window_start)
        .order_by()
        .values_list("instrument_id")
        .annotate(n=Count("id"))
        .values_list("instrument_id", "n")
    )
    latest_rejects: dict[int, list[RejectedTick]] = {i: [] for i in ids}
    for reject in (
        RejectedTick.objects.filter(instrument_id__in=ids, received_at__gte=window_start)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("instrument_id")],
                order_by=[F("received_at").desc(), F("id").desc()],
            )
        )
        .filter(rank__lte=rejects_shown)
        .order_by("instrument_id", "-received_at", "-id")
    ):
        latest_rejects[reject.instrument_id].append(reject)

    rows = []
    expected = (end_ms - start_ms) // MINUTE_MS
    for instrument in instruments:
        gaps = find_gaps(
            instrument_id=instrument.pk, timeframe="1m", start_ms=start_ms, end_ms=end_ms
        )
        gaps.reverse()  # newest first
        shown = gaps[:gaps_shown]
        ticks_in = _ticks_in_gaps(instrument.pk, shown)
        missing = sum(g.missing for g in gaps)
        base = overview.get(str(instrument), {})
        rows.append(
            {
                **base,
                "instrument": instrument,
                "status": _status_of(instrument),
                "last_candle_at": instrument.last_candle_at,
                "candle_lag_s": (now - instrument.last_candle_at).total_seconds()
                if instrument.last_candle_at
                else None,
                "expected": expected,
                "stored": expected - missing,
                "missing": missing,
                "gap_count": len(gaps),
                "gaps": [
                    {
                        # First and last missing close times (right-aligned minutes).
                        "first_ms": g.after_ms + MINUTE_MS,
                        "last_ms": g.before_ms - MINUTE_MS,
                        "missing": g.missing,
                        "ticks": ticks,
                    }
                    for g, ticks in zip(shown, ticks_in, strict=True)
                ],
                "gaps_hidden": max(0, len(gaps) - gaps_shown),
                "rejects_window": reject_counts.get(instrument.pk, 0),
                "latest_rejects": latest_rejects[instrument.pk],
            }
        )
    return {
        "rows": rows,
        "generated_at": now,
        "window_hours": window_hours,
        # Close times of the first and last minute of the window.
        "window_first_ms": start_ms + MINUTE_MS,
        "window_end_ms": end_ms,
        "unattributed_rejects": list(
            RejectedTick.objects.filter(instrument__isnull=True, received_at__gte=window_start)[
                :rejects_shown
            ]
        ),
    }


def _ticks_in_gaps(instrument_id: int, gaps: list[Any]) -> list[int]:
    """Raw ticks stored within each gap's missing minutes: one aggregate query, index ranges."""
    if not gaps:
        return []
    from marketdata.services import ms_to_datetime

    ranges = [
        Q(time__gt=ms_to_datetime(g.after_ms), time__lte=ms_to_datetime(g.before_ms - MINUTE_MS))
        for g in gaps
    ]
    # The OR of the ranges in WHERE keeps the scan to the gaps' own index ranges (a liquid
    # market stores millions of ticks a day around them).
    counts = (
        RawTick.objects.filter(instrument_id=instrument_id)
        .filter(reduce(operator.or_, ranges))
        .aggregate(**{f"g{i}": Count("id", filter=r) for i, r in enumerate(ranges)})
    )
    return [counts[f"g{i}"] for i in range(len(gaps))]


def market_schedules() -> list[Any]:
    """The beat schedules of the marketdata tasks (gap refill, backfill), editable in the admin."""
    from django_celery_beat.models import PeriodicTask

    return list(
        PeriodicTask.objects.filter(task__startswith="marketdata.")
        .select_related("interval", "crontab", "solar", "clocked")
        .order_by("name")
    )


# --- the raw audit rows (the REST API) -----------------------------------------------------------


def raw_ticks_between(
    *, instrument_id: int, since: datetime | None = None, until: datetime | None = None
) -> QuerySet:
    """An instrument's raw ticks with trade time in [since, until], oldest first (time, then
    id): a range of the (instrument, time) index however many ticks are stored."""
    rows = RawTick.objects.filter(instrument_id=instrument_id)
    if since is not None:
        rows = rows.filter(time__gte=since)
    if until is not None:
        rows = rows.filter(time__lte=until)
    return rows.order_by("time", "id")


def rejected_ticks_between(
    *,
    instrument_id: int | None,
    since: datetime | None = None,
    until: datetime | None = None,
    exchange: str | None = None,
    symbol: str | None = None,
) -> QuerySet:
    """An instrument's rejected ticks (``instrument_id`` None: those of no known instrument, such
    as unknown symbols) received in [since, until], oldest first (received_at, then id): a range
    of the (instrument, received_at) index, which holds the NULLs too."""
    if instrument_id is None:
        rows = RejectedTick.objects.filter(instrument__isnull=True)
    else:
        rows = RejectedTick.objects.filter(instrument_id=instrument_id)
    if since is not None:
        rows = rows.filter(received_at__gte=since)
    if until is not None:
        rows = rows.filter(received_at__lte=until)
    if exchange:
        rows = rows.filter(exchange=exchange)
    if symbol:
        rows = rows.filter(symbol=symbol)
    return rows.order_by("received_at", "id")
