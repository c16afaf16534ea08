import asyncio
from datetime import UTC, datetime

import ccxt
from django.core.management.base import BaseCommand, CommandError

from marketdata import backfill as history
from marketdata.aggregation import TIMEFRAMES
from marketdata.models import Instrument
from marketdata.providers.base import ProviderError
from marketdata.providers.factory import provider_for


def parse_time(value: str) -> int:
    """Epoch milliseconds from ``1700000000000`` or an ISO-8601 date/time (UTC if no zone)."""
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a time: {value!r} (give ISO-8601 or epoch ms)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


class Command(BaseCommand):
    help = (
        "Import closed candles from the exchange (close-time stamped), resumable: "
        "backfill binance BTC/USDT --timeframe 1m --since 2026-11-01 [--until 2026-11-02]"
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("exchange")
        parser.add_argument("symbol")
        parser.add_argument("--timeframe", default="1m", choices=TIMEFRAMES)
        parser.add_argument("--since", required=True)
        parser.add_argument("--until")

    def handle(self, *args, **options) -> None:
        try:
            instrument = Instrument.objects.select_related("exchange").get(
                exchange__ccxt_id=options["exchange"], symbol=options["symbol"]
            )
        except Instrument.DoesNotExist:
            raise CommandError(
                f"unknown instrument {options['exchange']}:{options['symbol']}"
            ) from None
        since = parse_time(options["since"])
        until = parse_time(options["until"]) if options["until"] else None
        if until is not None and until <= since:
            raise CommandError("--until must be after --since")
        try:
            count = asyncio.run(self._run(instrument, options["timeframe"], since, until))
        except ProviderError as exc:
            raise CommandError(str(exc)) from exc
        except ccxt.BaseError as exc:
            # Retried by the provider already; what is stored so far stays (resumable).
            raise CommandError(
                f"{instrument.exchange.ccxt_id} did not answer: {type(exc).__name__}: {exc}"
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"{instrument}: {count} candles received"))

    async def _run(self, instrument: Instrument, timeframe: str, since: int, until: int | None):
        provider = provider_for(instrument.exchange)
        try:
            return await history.backfill(
                provider, instrument_id=instrument.pk, symbol=instrument.symbol,
                timeframe=timeframe, since_ms=since, until_ms=until,
            )  # fmt: skip
        finally:
            await provider.close()
