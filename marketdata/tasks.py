"""Celery tasks of the collect queue: backfill and the periodic gap refill."""

from __future__ import annotations

import time

from asgiref.sync import async_to_sync
from celery import shared_task

from marketdata import backfill as history
from marketdata.models import Instrument
from marketdata.providers.factory import provider_for


async def _with_provider(instrument: Instrument, work):
    provider = provider_for(instrument.exchange)
    try:
        return await work(provider)
    finally:
        await provider.close()


@shared_task(name="marketdata.backfill", autoretry_for=(ConnectionError,), retry_backoff=True)
def backfill(instrument_id: int, timeframe: str, since_ms: int, until_ms: int | None = None) -> int:
    """Store the exchange's candles of one instrument in (since_ms, until_ms]."""
    instrument = Instrument.objects.select_related("exchange").get(pk=instrument_id)
    return async_to_sync(_with_provider)(
        instrument,
        lambda provider: history.backfill(
            provider,
            instrument_id=instrument.pk,
            symbol=instrument.symbol,
            timeframe=timeframe,
            since_ms=since_ms,
            until_ms=until_ms,
        ),
    )


@shared_task(name="marketdata.refill_gaps")
def refill_gaps(hours: int = 24) -> dict[str, int]:
    """Find missing 1m candles of every active instrument in the last ``hours`` and refill them."""
    end_ms = int(time.time() * 1000) // 60_000 * 60_000 - 60_000
    start_ms = end_ms - hours * 3_600_000
    filled: dict[str, int] = {}
    for instrument in Instrument.objects.active().select_related("exchange"):
        filled[str(instrument)] = async_to_sync(_with_provider)(
            instrument,
            lambda provider, inst=instrument: history.refill_gaps(
                provider,
                instrument_id=inst.pk,
                symbol=inst.symbol,
                start_ms=start_ms,
                end_ms=end_ms,
            ),
        )
    return filled
