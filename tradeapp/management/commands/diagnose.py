import json
import uuid

from django.core.management.base import BaseCommand, CommandError

from tradeapp.health import system_health
from tradeapp.tasks import diagnose


class Command(BaseCommand):
    help = "Check database, Redis and workers, then run one task through a worker and back."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="seconds to wait for the task"
        )

    def handle(self, *args, **options) -> None:
        health = system_health()
        self.stdout.write(json.dumps(health, indent=2))
        if not health["ok"]:
            raise CommandError("some part is down")
        token = uuid.uuid4().hex
        result = diagnose.delay(token).get(timeout=options["timeout"])
        if result["token"] != token:
            raise CommandError(f"task answered {result!r}")
        self.stdout.write(self.style.SUCCESS(f"task ran on a worker: {json.dumps(result)}"))
