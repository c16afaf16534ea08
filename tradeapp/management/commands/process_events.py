import os
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tradeapp import supervise
from tradeapp.events import SYSTEM_EVENT_CHANNEL, publish


class Command(BaseCommand):
    help = (
        "The `events` listener of `make run`'s supervisord: logs, counts and publishes on "
        "system_events every exit nobody asked for and the restart that follows, and starts "
        "again, after a growing wait, a process supervisord gave up on (tradeapp/supervise.py)."
    )

    def handle(self, *args, **options) -> None:
        server_url = os.environ.get("SUPERVISOR_SERVER_URL")
        if not server_url:
            raise CommandError(
                "run by supervisord as an event listener ([eventlistener:events] in "
                "var/supervisord.conf, written by `python manage.py supervise`), not by hand"
            )
        monitor = supervise.ProcessMonitor(
            supervisor=supervise.client(server_url, timeout=5),
            state_file=settings.TRADEAPP_PROCESS_STATE_FILE,
            publish=lambda payload: publish(SYSTEM_EVENT_CHANNEL, payload),
            retry_after=settings.TRADEAPP_PROCESS_RETRY_AFTER,
            retry_max=settings.TRADEAPP_PROCESS_RETRY_MAX,
            # Our parent: a record of another supervisord's run is not ours to continue.
            supervisor_pid=os.getppid(),
            start_seconds=settings.TRADEAPP_PROCESS_START_SECONDS,
            log_file=settings.VAR_DIR / supervise.SUPERVISORD_LOG,
            own_name=os.environ.get("SUPERVISOR_PROCESS_NAME"),
        )
        monitor.reconcile()
        # supervisord stops its listeners last, with SIGTERM: a clean exit, not a crash.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        supervise.listen(monitor.on_event, on_idle=monitor.tick, idle_seconds=1.0)
