import asyncio
import os
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
        self._bots(instruments)

    def _bots(self, instruments) -> None:
        """Paper bots for the demo user (the admin of `make run`), so signals and trades show
        within minutes."""
        from django.contrib.auth import get_user_model

        from bots.services import demo_bots_ensure

        username = os.environ.get("TRADEAPP_ADMIN_USERNAME", "admin")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            self.stdout.write(f"demo: no user {username!r}, no demo bots (run ensure_admin)")
            return
        bots = demo_bots_ensure(user=user, instruments=instruments)
        self.stdout.write(
            self.style.SUCCESS(f"demo: {len(bots)} paper bots running for {username!r}")
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
