from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tradeapp import supervise


class Command(BaseCommand):
    help = (
        "Run the Procfile's processes under supervisord (used by `make run`): a process that "
        "dies is started again while the others keep running; Ctrl-C stops them all. All "
        "processes by default (but the embedded Redis when REDIS_URL is set), or those named."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("names", nargs="*", help="processes of the Procfile (default: all)")
        parser.add_argument(
            "--procfile", type=Path, default=settings.BASE_DIR / "Procfile", help="Procfile path"
        )

    def handle(self, *args, **options) -> None:
        procfile: Path = options["procfile"]
        try:
            processes = supervise.select_processes(
                supervise.parse_procfile(procfile.read_text(), source=str(procfile)),
                options["names"],
                embedded=settings.EMBEDDED_REDIS_SOCKET is not None,
            )
            conf = supervise.prepare(
                processes,
                var_dir=settings.VAR_DIR,
                base_dir=settings.BASE_DIR,
                socket_path=settings.TRADEAPP_SUPERVISOR_SOCKET,
                state_file=settings.TRADEAPP_PROCESS_STATE_FILE,
                options=supervise.ProcessOptions(
                    start_seconds=settings.TRADEAPP_PROCESS_START_SECONDS,
                    start_retries=settings.TRADEAPP_PROCESS_START_RETRIES,
                    stop_seconds=settings.TRADEAPP_PROCESS_STOP_SECONDS,
                ),
            )
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"supervisord: {', '.join(processes)} (config {conf}, control socket "
            f"{settings.TRADEAPP_SUPERVISOR_SOCKET})"
        )
        self.stdout.flush()
        supervise.exec_supervisord(conf)
