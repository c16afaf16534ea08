import asyncio
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from marketdata.collector import DataCollector
from marketdata.models import Exchange
from marketdata.providers.base import ProviderError
from marketdata.providers.factory import provider_for


def _sleep_or_stop(seconds: float) -> bool:
    """Sleep; True when SIGINT/SIGTERM arrived meanwhile."""
    stopped = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return stopped.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Command(BaseCommand):
    help = (
        "Collect trades and build candles for the given symbols (BTC/USDT or exchange:BTC/USDT), "
        "by default every active instrument of every active exchange. Runs until SIGINT/SIGTERM."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("symbols", nargs="*")
        parser.add_argument("--flush-interval", type=float, default=1.0, help="seconds")

    def handle(self, *args, **options) -> None:
        collector = DataCollector(flush_interval=options["flush_interval"])
        while True:
            exchanges = list(
                Exchange.objects.filter(active=True, instruments__active=True).distinct()
            )
            symbols = options["symbols"] or sorted(
                f"{e.ccxt_id}:{i.symbol}"
                for e in exchanges
                for i in e.instruments.filter(active=True)
            )
            if symbols:
                break
            # A fresh production install has no instrument yet: wait for one to be added in the
            # admin rather than exit (which would stop the other processes of `make run`).
            self.stdout.write("no active instrument to collect yet; checking again in 30 s")
            if _sleep_or_stop(30):
                return
        for exchange in exchanges:
            collector.register_provider(exchange.ccxt_id, provider_for(exchange))
        self.stdout.write(f"collecting {', '.join(symbols)}")
        try:
            asyncio.run(self._run(collector, symbols))
        except ProviderError as exc:
            raise CommandError(str(exc)) from exc

    async def _run(self, collector: DataCollector, symbols: list[str]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await collector.run(symbols, stop=stop)
