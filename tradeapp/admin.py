"""The admin site's titles and what the apps' admins share (the project has no models of its own).

Registered by their own apps: auth (users, groups), authtoken (API tokens), django_celery_beat
(periodic tasks and their interval/crontab/solar/clocked schedules: the beat schedules are edited
there, and beat's database scheduler picks the changes up) and django_celery_results.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property
from rest_framework.authtoken.admin import TokenAdmin

admin.site.site_header = "tradeapp administration"
admin.site.site_title = "tradeapp admin"
admin.site.index_title = "Bots, market data, strategies and research"

#: Below this many rows (by the planner's statistics) a table is counted exactly.
ESTIMATE_FROM_ROWS = 100_000


class EstimatedCountPaginator(Paginator):
    """For the tables that grow by millions of rows (raw ticks, candles, signals): an
    unfiltered changelist takes its row count from PostgreSQL's statistics (``reltuples``)
    instead of a ``COUNT(*)`` that reads the whole table on every page view. A filtered list, a
    small table and other databases are counted exactly."""

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        query = getattr(rows, "query", None)
        if query is not None and not query.where:
            connection = connections[rows.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [rows.model._meta.db_table],
                    )
                    found = cursor.fetchone()
                if found and found[0] >= ESTIMATE_FROM_ROWS:  # -1: never analysed
                    return int(found[0])
        return super().count


# API tokens are credentials: the admin's list shows only their first characters (DRF's own
# admin shows the whole key). Customised the way DRF documents (``TokenAdmin.raw_id_fields``).
@admin.display(description="key")
def _masked_token_key(token) -> str:
    return f"{token.key[:4]}…"


TokenAdmin.list_display = (_masked_token_key, "user", "created")
TokenAdmin.raw_id_fields = ("user",)
