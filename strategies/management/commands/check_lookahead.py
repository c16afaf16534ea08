import json

from django.core.management.base import BaseCommand, CommandError

from strategies.base import StrategyParameterError
from strategies.lookahead import check_lookahead, random_walk_ohlcv
from strategies.registry import StrategyModuleError, UnknownStrategyError, available, get_strategy


class Command(BaseCommand):
    help = (
        "Check that strategies never look ahead, on random-walk candles: "
        'check_lookahead sma_crossover [--params \'{"fast": 5, "slow": 20}\'] [--bars 2000] '
        "[--seed 0] [--cuts 25], or check_lookahead --all. Exits non-zero on a failure."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("strategy", nargs="*", help="registered strategy name(s)")
        parser.add_argument("--all", action="store_true", help="check every registered strategy")
        parser.add_argument("--bars", type=int, default=2000, help="candles of random data")
        parser.add_argument("--params", help="parameters as a JSON object (one strategy only)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the data and cut points")
        parser.add_argument("--cuts", type=int, default=25, help="random cut points to test")

    def handle(self, *args, **options) -> None:
        try:
            names = available() if options["all"] else options["strategy"]
        except StrategyModuleError as exc:
            raise CommandError(str(exc)) from exc
        if not names:
            raise CommandError(
                f"name a strategy or give --all; available: {', '.join(available())}"
            )
        parameters = self._parameters(options["params"], names)
        if options["cuts"] < 1:
            raise CommandError("--cuts must be at least 1")
        failed = []
        for name in names:
            try:
                strategy_cls = get_strategy(name)
                params = strategy_cls.clean_parameters(parameters)
            except (UnknownStrategyError, StrategyParameterError, StrategyModuleError) as exc:
                raise CommandError(str(exc)) from exc
            needed = strategy_cls.warmup(params) + 2
            if options["bars"] < needed:
                raise CommandError(
                    f"--bars {options['bars']} is too few for {name} {params}: its warm-up needs "
                    f"at least {needed} bars to test a signal"
                )
            data = random_walk_ohlcv(options["bars"], seed=options["seed"])
            try:
                report = check_lookahead(
                    strategy_cls, params, data, n_cuts=options["cuts"], seed=options["seed"]
                )
            except Exception as exc:  # user strategy code: report, do not crash
                raise CommandError(f"{name} raised {type(exc).__name__}: {exc}") from exc
            self.stdout.write(
                self.style.SUCCESS(report.summary())
                if report.ok
                else self.style.ERROR(report.summary())
            )
            if not report.ok:
                failed.append(name)
        if failed:
            raise CommandError(f"lookahead detected in {', '.join(failed)}")

    def _parameters(self, raw: str | None, names: list[str]) -> dict | None:
        if raw is None:
            return None
        if len(names) != 1:
            raise CommandError("--params applies to one strategy; name exactly one")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CommandError("--params must be a JSON object, e.g. '{\"fast\": 5}'")
        return value
