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
        self._research(user, instruments[0])

    def _research(self, user, instrument) -> None:
        """A backtest and a two-parameter grid on the loaded history, so the research pages have
        results to show (once: kept when they exist). Stored queued, not sent: no broker runs
        yet; the worker sends them when it starts (``runs_send_unsent``)."""
        from django.db.models import Max, Min

        from backtests.models import BacktestRun, OptimizationRun
        from backtests.services import backtest_create, optimization_create
        from marketdata.models import Candle

        span = Candle.objects.filter(instrument=instrument, timeframe="1m").aggregate(
            first=Min("close_time"), last=Max("close_time")
        )
        if span["first"] is None or span["first"] == span["last"]:
            return
        period = {"instrument": instrument, "timeframe": "1m", "start": span["first"],
                  "end": span["last"]}  # fmt: skip
        if not BacktestRun.objects.filter(owner=user).exists():
            run = backtest_create(
                user=user,
                strategy="sma_crossover",
                parameters={"fast": 5, "slow": 20},
                enqueue=False,
                **period,
            )
            self.stdout.write(self.style.SUCCESS(f"demo: backtest #{run.pk} queued"))
        if not OptimizationRun.objects.filter(owner=user).exists():
            run = optimization_create(
                user=user, strategy="sma_crossover", method="grid", objective="sharpe",
                space={"fast": [3, 5, 8, 10, 12, 15], "slow": [20, 30, 40, 50, 60]},
                enqueue=False, **period,
            )  # fmt: skip
            self.stdout.write(self.style.SUCCESS(f"demo: optimisation #{run.pk} queued"))

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
