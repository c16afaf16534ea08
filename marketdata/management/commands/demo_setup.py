import asyncio
import time

from django.core.management.base import BaseCommand

from marketdata import backfill as history
from marketdata.models import Exchange
from marketdata.providers.factory import provider_for
from marketdata.services import instrument_ensure

DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


class Command(BaseCommand):
    help = (
        "Create the demo's simulated exchange and instruments and load their recent history, "
        "so live candles show at once. Idempotent."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--hours", type=int, default=24, help="history to load")

    def handle(self, *args, **options) -> None:
        exchange, _ = Exchange.objects.get_or_create(
            ccxt_id="simulated",
            defaults={"name": "Simulated exchange", "kind": Exchange.Kind.SIMULATED,
                      "options": {"seed": 7}},
        )  # fmt: skip
        instruments = [instrument_ensure(exchange_id="simulated", symbol=s) for s in DEMO_SYMBOLS]
        now_ms = int(time.time() * 1000)
        since = (now_ms - options["hours"] * 3_600_000) // 60_000 * 60_000
        total = asyncio.run(self._load(exchange, instruments, since))
        self.stdout.write(
            self.style.SUCCESS(
                f"demo: {', '.join(DEMO_SYMBOLS)} on the simulated exchange, "
                f"{total} 1m candles loaded"
            )
        )

    async def _load(self, exchange, instruments, since: int) -> int:
        provider = provider_for(exchange)
        try:
            total = 0
            for inst in instruments:
                total += await history.backfill(
                    provider, instrument_id=inst.pk, symbol=inst.symbol, timeframe="1m",
                    since_ms=since,
                )  # fmt: skip
            return total
        finally:
            await provider.close()
