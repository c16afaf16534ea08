from django.contrib import admin

from marketdata.models import Candle, CollectionStatus, Exchange, Instrument, RawTick, RejectedTick
from tradeapp.admin import EstimatedCountPaginator


class ReadOnlyAdmin(admin.ModelAdmin):
    """Audit data: visible, never edited or deleted through the admin."""

    # Counting millions of rows on every page is slow: show "Show all" without a total, and
    # take an unfiltered list's total from the planner's statistics. No date_hierarchy on the
    # big tables either: its year/month links are a DISTINCT over every row.
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Exchange)
class ExchangeAdmin(admin.ModelAdmin):
    list_display = ("ccxt_id", "name", "kind", "api_base_url", "active", "updated_at")
    list_filter = ("kind", "active")
    search_fields = ("ccxt_id", "name")
    readonly_fields = ("created_at", "updated_at")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ("symbol", "exchange", "base", "quote", "active", "timeframes", "created_at")
    list_filter = ("exchange", "active", "quote")
    # Also what the instrument pickers of bots and runs (autocomplete_fields) search.
    search_fields = ("symbol", "base", "quote", "exchange__ccxt_id")
    list_select_related = ("exchange",)
    readonly_fields = ("created_at",)


@admin.register(RawTick)
class RawTickAdmin(ReadOnlyAdmin):
    list_display = ("time", "instrument", "trade_id", "price", "amount", "side", "received_at")
    list_filter = ("instrument__exchange", "instrument", "side")
    # Exact: a substring search would read every tick.
    search_fields = ("=trade_id",)
    list_select_related = ("instrument__exchange",)


@admin.register(RejectedTick)
class RejectedTickAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "exchange", "symbol", "instrument", "reason")
    list_filter = ("exchange", "instrument")
    search_fields = ("symbol", "reason")
    list_select_related = ("instrument__exchange",)
    date_hierarchy = "received_at"


@admin.register(Candle)
class CandleAdmin(ReadOnlyAdmin):
    list_display = (
        "close_time", "instrument", "timeframe", "open", "high", "low", "close", "volume",
        "trades", "source",
    )  # fmt: skip
    list_filter = ("timeframe", "source", "instrument__exchange", "instrument")
    search_fields = ("instrument__symbol",)
    list_select_related = ("instrument__exchange",)


@admin.register(CollectionStatus)
class CollectionStatusAdmin(ReadOnlyAdmin):
    list_display = (
        "instrument", "state", "last_tick_at", "lag", "ticks_count", "rejects_count",
        "last_error_at", "heartbeat_at",
    )  # fmt: skip
    list_filter = ("state",)
    search_fields = ("instrument__symbol", "last_error")
    list_select_related = ("instrument__exchange",)
