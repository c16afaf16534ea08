"""History from the providers: backfill of candles and the gap detector that refills holes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from asgiref.sync import sync_to_async

from marketdata import services
from marketdata.aggregation import parse_timeframe
from marketdata.models import Candle, Instrument
from marketdata.providers.base import DataProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gap:
    """Missing candles: close times in (after_ms, before_ms) exclusive, ``missing`` of them."""

    after_ms: int
    before_ms: int
    missing: int


def _resume_point(instrument_id: int, timeframe: str, since_ms: int, until_ms: int | None) -> int:
    qs = Candle.objects.filter(
        instrument_id=instrument_id,
        timeframe=timeframe,
        close_time__gt=services.ms_to_datetime(since_ms),
    )
    if until_ms is not None:
        qs = qs.filter(close_time__lte=services.ms_to_datetime(until_ms))
    last = qs.order_by("-close_time").values_list("close_time", flat=True).first()
    return since_ms if last is None else services.datetime_to_ms(last)


def _store_page(instrument_id: int, timeframe: str, page: list[dict]) -> None:
    # Exchanges send flat zero-volume candles for intervals without trades; by our convention
    # an empty interval has no candle.
    page = [c for c in page if float(c["volume"]) > 0]
    services.candles_upsert(
        instrument_id=instrument_id,
        timeframe=timeframe,
        candles=page,
        source=Candle.Source.EXCHANGE,
        only_missing=True,
    )


def _rebuild(instrument_id: int, start_ms: int, end_ms: int) -> None:
    instrument = Instrument.objects.get(pk=instrument_id)
    # Every minute up to end_ms has been fetched as closed: higher candles up to it are final.
    services.candles_rebuild_higher(
        instrument=instrument, start_ms=start_ms, end_ms=end_ms, final_until_ms=end_ms
    )


async def backfill(
    provider: DataProvider,
    *,
    instrument_id: int,
    symbol: str,
    timeframe: str,
    since_ms: int,
    until_ms: int | None = None,
    resume: bool = True,
    page_limit: int = 1000,
) -> int:
    """Store the provider's closed candles with close time in (since_ms, until_ms].

    Pages with our own since/limit loop (the provider converts the exchange's open-time stamps to
    close times and drops the still-open candle). Never overwrites a stored candle. With
    ``resume``, starts after the newest candle already stored in the range, so an interrupted
    backfill continues where it stopped. For 1m, the higher timeframes of the range are rebuilt.
    Returns the number of candles received.
    """
    parse_timeframe(timeframe)  # refuse an unknown timeframe before any request
    start = (
        await sync_to_async(_resume_point)(instrument_id, timeframe, since_ms, until_ms)
        if resume
        else since_ms
    )
    cursor, total = start, 0
    while until_ms is None or cursor < until_ms:
        page = await provider.fetch_candles(symbol, timeframe, cursor, limit=page_limit)
        if until_ms is not None:
            page = [c for c in page if c["timestamp"] <= until_ms]
        page = [c for c in page if c["timestamp"] > cursor]
        if not page:
            break
        await sync_to_async(_store_page)(instrument_id, timeframe, page)
        total += len(page)
        cursor = int(page[-1]["timestamp"])
        logger.info("backfill %s %s: %d candles up to %d", symbol, timeframe, total, cursor)
    if timeframe == "1m" and total:
        await sync_to_async(_rebuild)(instrument_id, start, cursor)
    return total


def find_gaps(*, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Gap]:
    """Runs of missing candles with close time in (start_ms, end_ms].

    A liquid market has a candle every interval; an interval without one is a gap (for an
    illiquid one it may simply have had no trade: refilling from the exchange tells which).
    """
    interval = parse_timeframe(timeframe) * 1000
    closes = services.candles_arrays(
        instrument_id=instrument_id, timeframe=timeframe, start_ms=start_ms, end_ms=end_ms
    )["timestamp"].tolist()
    first = -(-(start_ms + 1) // interval) * interval  # first close time after start_ms
    last = (end_ms // interval) * interval
    if first > last:
        return []
    gaps: list[Gap] = []
    previous = first - interval
    for close in [*closes, last + interval]:
        missing = (close - previous) // interval - 1
        if missing > 0:
            gaps.append(Gap(previous, close, int(missing)))
        previous = close
    return gaps


async def refill_gaps(
    provider: DataProvider, *, instrument_id: int, symbol: str, start_ms: int, end_ms: int
) -> int:
    """Find the 1m gaps in (start_ms, end_ms] and fill them from the provider."""
    gaps = await sync_to_async(find_gaps)(
        instrument_id=instrument_id, timeframe="1m", start_ms=start_ms, end_ms=end_ms
    )
    filled = 0
    for gap in gaps:
        filled += await backfill(
            provider,
            instrument_id=instrument_id,
            symbol=symbol,
            timeframe="1m",
            since_ms=gap.after_ms,
            until_ms=gap.before_ms - 1,
            resume=False,
        )
    return filled
