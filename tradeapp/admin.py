"""The admin site's titles, what the apps' admins share, and the platform's own rows: per-user
limits, edited on each user's page (an inline on the user admin) and listed under *Per-user
limits*.

Registered by their own apps: auth (users, groups; the user admin is auth's, with the limits
inline added here), authtoken (API tokens), django_celery_beat (periodic tasks and their
interval/crontab/solar/clocked schedules: the beat schedules are edited there, and beat's
database scheduler picks the changes up) and django_celery_results.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property
from rest_framework.authtoken.admin import TokenAdmin

from tradeapp import limits
from tradeapp.models import UserLimits

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


# --- per-user limits ------------------------------------------------------------------------------


def _in_effect(user) -> str:
    """The user's effective limits and what they use now, one line."""
    allowed = limits.limits_for(user)
    text = (
        f"{allowed.concurrent_runs:,} research runs at once, {allowed.combinations:,} "
        f"combinations per optimisation, {allowed.bars:,} bars per run, {allowed.bots:,} bots"
    )
    if getattr(user, "pk", None) is None:
        return text
    runs = limits.research_runs_active(user)
    bots = limits.bots_owned(user)
    return f"{text}; now {runs} run(s) queued or running, {bots} bot(s)"


class _InEffect:
    """The ``in_effect`` read-only field of the limits' admin forms."""

    @admin.display(description="in effect")
    def in_effect(self, obj: UserLimits | None) -> str:
        return _in_effect(obj.user if obj is not None and obj.user_id else None)


class UserLimitsInline(_InEffect, admin.StackedInline):
    """The user's own limits on the user's page; an empty value is the installation's default
    (``TRADEAPP_LIMIT_*``). Saved with the user form; deleting the row restores every default."""

    model = UserLimits
    fields = (*limits.LIMIT_NAMES, "note", "in_effect")
    readonly_fields = ("in_effect",)
    max_num = 1
    extra = 1
    verbose_name = "per-user limits (empty: the installation's default)"
    verbose_name_plural = verbose_name


User = get_user_model()
# auth's user admin (or whichever app registered the user model before this one), kept as it is
# with the limits' inline added.
_RegisteredUserAdmin = type(admin.site.get_model_admin(User))
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(_RegisteredUserAdmin):
    inlines = (*_RegisteredUserAdmin.inlines, UserLimitsInline)

    def get_inlines(self, request, obj=None):
        # Adding a user is auth's two-step form (name and password first): limits come after.
        return super().get_inlines(request, obj) if obj is not None else ()


@admin.register(UserLimits)
class UserLimitsAdmin(_InEffect, admin.ModelAdmin):
    """Every user with limits of their own (the others have the defaults)."""

    list_display = ("user", *limits.LIMIT_NAMES, "note", "updated_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "user__email", "note")
    raw_id_fields = ("user",)
    fields = ("user", *limits.LIMIT_NAMES, "note", "in_effect")
    readonly_fields = ("in_effect",)
    empty_value_display = "default"
