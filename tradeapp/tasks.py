"""Platform-level tasks."""

from __future__ import annotations

import socket
from typing import Any

from celery import shared_task
from django.db import connection


@shared_task(name="tradeapp.diagnose")
def diagnose(token: str) -> dict[str, Any]:
    """Round trip through broker, worker, database and result backend; echoes ``token``.

    ``manage.py diagnose`` and the test suite use it to prove that a worker really runs tasks.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        db_ok = cursor.fetchone() == (1,)
    return {
        "token": token,
        "hostname": socket.gethostname(),
        "database": connection.vendor if db_ok else "error",
        "database_name": str(connection.settings_dict["NAME"]),
    }
