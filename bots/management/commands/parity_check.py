from django.core.management.base import BaseCommand, CommandError

from bots.models import Bot
from bots.parity import parity_check


class Command(BaseCommand):
    help = (
        "Replay the candles a bot saw through the backtest engine with the bot's settings and "
        "diff signals and fills bar by bar. Exits non-zero on any mismatch."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("bot_id", type=int)
        parser.add_argument(
            "--tolerance", type=float, default=1e-9,
            help="relative difference allowed in fill prices and quantities (default 1e-9)",
        )  # fmt: skip

    def handle(self, *args, **options) -> None:
        try:
            bot = Bot.objects.get(pk=options["bot_id"])
        except Bot.DoesNotExist:
            raise CommandError(f"no bot with id {options['bot_id']}") from None
        report = parity_check(bot, tolerance=options["tolerance"])
        for line in report.lines():
            self.stdout.write(line)
        if not report.ok:
            raise CommandError(
                f"bot {bot.pk}: {len(report.signal_mismatches)} signal and "
                f"{len(report.fill_mismatches)} fill mismatch(es)"
            )
