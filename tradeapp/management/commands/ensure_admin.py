import os
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from tradeapp.services import admin_ensure


class Command(BaseCommand):
    help = (
        "Create (or reset) the demo admin user. Credentials come from TRADEAPP_ADMIN_USERNAME and "
        "TRADEAPP_ADMIN_PASSWORD; in the embedded profile a missing password is generated once "
        "and kept in var/admin-password."
    )

    def handle(self, *args, **options) -> None:
        username = os.environ.get("TRADEAPP_ADMIN_USERNAME", "admin")
        password = os.environ.get("TRADEAPP_ADMIN_PASSWORD", "")
        if not password:
            if settings.PRODUCTION:
                self.stdout.write("TRADEAPP_ADMIN_PASSWORD not set: no demo admin in production.")
                return
            password_file = settings.VAR_DIR / "admin-password"
            if not password_file.exists():
                fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(12))
            password = password_file.read_text().strip()
        _, created = admin_ensure(
            username=username, password=password, email=os.environ.get("TRADEAPP_ADMIN_EMAIL", "")
        )
        verb = "created" if created else "ready"
        self.stdout.write(
            self.style.SUCCESS(f"Admin user {verb}: username {username!r}, password {password!r}")
        )
