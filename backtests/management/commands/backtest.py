import json
import time

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from backtests import services
from backtests.models import FINISHED, BacktestRun, RunStatus
from marketdata.aggregation import TIMEFRAMES
from marketdata.management.commands.backfill import parse_time
from marketdata.models import Instrument
from marketdata.services import ms_to_datetime
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError


def parse_param(text: str) -> tuple[str, object]:
    """``fast=10`` -> ("fast", 10): the value is read as JSON, else kept as text."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise CommandError(f"--param takes name=value, not {text!r}")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


class Command(BaseCommand):
    help = (
        "Backtest a strategy on stored candles and print its metrics: "
        "backtest sma_crossover BTC/USDT --timeframe 1h --since 2026-10-01 --param fast=10. "
        "The run is stored and executed by a worker (--local: in this process)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("strategy")
        parser.add_argument("symbol")
        parser.add_argument("--exchange", help="exchange id, when the symbol is on several")
        parser.add_argument("--timeframe", default="1h", choices=TIMEFRAMES)
        parser.add_argument("--since", required=True)
        parser.add_argument("--until")
        parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
        parser.add_argument("--cash", type=float, default=10_000)
        parser.add_argument("--fee", type=float, default=0.001)
        parser.add_argument("--slippage", type=float, default=0.0)
        parser.add_argument("--size", type=float, default=1.0)
        parser.add_argument("--fill", choices=["next_open", "close"], default="next_open")
        parser.add_argument("--allow-short", action="store_true")
        parser.add_argument(
            "--fee-in-base", action="store_true",
            help="a buy's fee is taken from the coin bought (Binance's default rule)",
        )  # fmt: skip
        parser.add_argument("--stop-loss", type=float)
        parser.add_argument("--take-profit", type=float)
        parser.add_argument("--trailing-stop", type=float)
        parser.add_argument("--user", help="owner of the stored run (default: first superuser)")
        parser.add_argument("--local", action="store_true", help="run here, not in a worker")
        parser.add_argument("--timeout", type=float, default=600, help="seconds to wait")

    def handle(self, *args, **o) -> None:
        instruments = Instrument.objects.filter(symbol=o["symbol"]).select_related("exchange")
        if o["exchange"]:
            instruments = instruments.filter(exchange__ccxt_id=o["exchange"])
        found = list(instruments)
        if len(found) != 1:
            where = ", ".join(str(i) for i in found) or "none"
            raise CommandError(f"{o['symbol']}: {len(found)} instruments match ({where}); "
                               "give --exchange")  # fmt: skip
        owner = self._owner(o["user"])
        start = ms_to_datetime(parse_time(o["since"]))
        end = (
            ms_to_datetime(parse_time(o["until"]))
            if o["until"]
            else ms_to_datetime(int(time.time() * 1000))
        )
        try:
            run = services.backtest_create(
                user=owner, strategy=o["strategy"], parameters=dict(map(parse_param, o["param"])),
                instrument=found[0], timeframe=o["timeframe"], start=start, end=end,
                enqueue=not o["local"], cash=o["cash"], fee=o["fee"], slippage=o["slippage"],
                size=o["size"], fill=o["fill"], allow_short=o["allow_short"],
                fee_in_base=o["fee_in_base"],
                stop_loss=o["stop_loss"], take_profit=o["take_profit"],
                trailing_stop=o["trailing_stop"],
            )  # fmt: skip
        except (StrategyParameterError, UnknownStrategyError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:  # an engine setting, the owner's limits
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"backtest #{run.pk} {'running here' if o['local'] else 'queued'}")
        if o["local"]:
            services.backtest_execute(run.pk)
        run = self._wait(run.pk, o["timeout"])
        if run.status != RunStatus.DONE:
            raise CommandError(f"backtest #{run.pk} {run.status}: {run.error}")
        self.stdout.write(self._table(run))

    def _owner(self, username: str | None):
        users = get_user_model().objects
        owner = users.filter(username=username).first() if username else (
            users.filter(is_superuser=True).order_by("pk").first()
        )  # fmt: skip
        if owner is None:
            raise CommandError("no such user: give --user (or create an admin: ensure_admin)")
        return owner

    def _wait(self, run_id: int, timeout: float) -> BacktestRun:
        deadline = time.monotonic() + timeout
        shown = -1.0
        while True:
            run = BacktestRun.objects.get(pk=run_id)
            if run.progress != shown and run.status not in FINISHED:
                self.stdout.write(f"  {run.status} {run.progress:.0%}")
                shown = run.progress
            if run.status in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise CommandError(f"backtest #{run_id} still {run.status} after {timeout}s "
                                   "(is a worker consuming the backtests queue?)")  # fmt: skip
            time.sleep(0.5)

    def _table(self, run: BacktestRun) -> str:
        lines = [f"{run.strategy} {run.parameters} on {run.instrument} {run.timeframe}, "
                 f"{run.data_bars} bars {run.data_first:%Y-%m-%d %H:%M} .. "
                 f"{run.data_last:%Y-%m-%d %H:%M} UTC"]  # fmt: skip
        width = max(len(k) for k in run.metrics) if run.metrics else 0
        for key, value in sorted(run.metrics.items()):
            shown = f"{value:,.6g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key.ljust(width)}  {shown}")
        lines.append(f"  data sha256 {run.data_hash[:16]}…, engine {run.engine_version}, "
                     f"strategy {run.strategy_version}")  # fmt: skip
        return "\n".join(lines)
