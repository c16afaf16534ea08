from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tradeapp import embedded_redis


class Command(BaseCommand):
    help = "Run the embedded profile's private Redis server in the foreground (used by `make run`)."

    def handle(self, *args, **options) -> None:
        if settings.EMBEDDED_REDIS_SOCKET is None:
            raise CommandError("REDIS_URL is set: the production profile uses that Redis server.")
        self.stdout.write(f"embedded Redis on unix://{settings.EMBEDDED_REDIS_SOCKET}")
        self.stdout.flush()
        embedded_redis.serve(settings.EMBEDDED_REDIS_SOCKET)
