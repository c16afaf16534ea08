from django.contrib import admin

from marketdata.models import Candle, CollectionStatus, Exchange, Instrument, RawTick, RejectedTick


class ReadOnlyAdmin(admin.ModelAdmin):
    """Audit data: visible, never edited or deleted through the admin."""

    # Counting millions of rows on every page is slow: show "Show all" without a total.
    show_full_result_count = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Exchange)
class ExchangeAdmin(admin.ModelAdmin):
    list_display = ("ccxt_id", "name", "kind", "api_base_url", "active")
    list_filter = ("kind", "active")
    search_fields = ("ccxt_id", "name")


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ("symbol", "exchange", "base", "quote", "active", "timeframes")
    list_filter = ("exchange", "active", "quote")
    search_fields = ("symbol", "base", "quote")
    list_select_related = ("exchange",)


@admin.register(RawTick)
class RawTickAdmin(ReadOnlyAdmin):
    list_display = ("time", "instrument", "trade_id", "price", "amount", "side", "received_at")
    list_filter = ("instrument__exchange", "instrument", "side")
    search_fields = ("trade_id",)
    date_hierarchy = "time"
    list_select_related = ("instrument__exchange",)


@admin.register(RejectedTick)
class RejectedTickAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "exchange", "symbol", "reason")
    list_filter = ("exchange", "instrument")
    search_fields = ("symbol", "reason")
    date_hierarchy = "received_at"


@admin.register(Candle)
class CandleAdmin(ReadOnlyAdmin):
    list_display = (
        "close_time", "instrument", "timeframe", "open", "high", "low", "close", "volume",
        "trades", "source",
    )  # fmt: skip
    list_filter = ("timeframe", "source", "instrument__exchange", "instrument")
    search_fields = ("instrument__symbol",)
    date_hierarchy = "close_time"
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
