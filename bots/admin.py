from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from bots import services
from bots.manager import BotManager
from bots.models import (
    Bot,
    BotEvent,
    ExchangeAccount,
    Fill,
    Order,
    Position,
    RiskBudget,
    Signal,
    Trade,
)
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError, available


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the bots (the decision log, orders, fills, trades, the audit trail):
    shown, filtered and searched, never added or edited by hand."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ExchangeAccountForm(forms.ModelForm):
    """Credentials are write-only: the fields never show the stored value; empty keeps it."""

    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the stored key.",
    )  # fmt: skip
    api_secret = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )  # fmt: skip

    class Meta:
        model = ExchangeAccount
        fields = ("owner", "exchange", "label")

    def save(self, commit: bool = True) -> ExchangeAccount:
        account = super().save(commit=False)
        account.set_credentials(
            api_key=self.cleaned_data.get("api_key") or None,
            api_secret=self.cleaned_data.get("api_secret") or None,
        )
        if commit:
            account.save()
        return account


@admin.register(ExchangeAccount)
class ExchangeAccountAdmin(admin.ModelAdmin):
    form = ExchangeAccountForm
    list_display = ("label", "exchange", "owner", "credentials", "updated_at")
    list_filter = ("exchange",)
    search_fields = ("label", "owner__username")
    readonly_fields = ("credentials", "created_at", "updated_at")
    list_select_related = ("exchange", "owner")

    @admin.display(description="Credentials")
    def credentials(self, obj: ExchangeAccount) -> str:
        return obj.credentials_state


class BotForm(forms.ModelForm):
    strategy = forms.ChoiceField(choices=())

    class Meta:
        model = Bot
        fields = (
            "owner", "name", "strategy", "parameters", "instrument", "timeframe", "mode",
            "account", "capital", "max_position_fraction", "stop_loss", "take_profit",
            "trailing_stop", "cooldown_candles", "max_daily_loss", "fee", "slippage",
        )  # fmt: skip

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "strategy" in self.fields:
            self.fields["strategy"].choices = [(name, name) for name in available()]

    def clean(self):
        data = super().clean()
        name = data.get("strategy")
        if name and "parameters" in self.fields:
            try:
                data["parameters"] = services.parameters_clean(name, data.get("parameters"))
            except StrategyParameterError as exc:
                raise ValidationError({"parameters": str(exc)}) from exc
            except UnknownStrategyError as exc:
                raise ValidationError({"strategy": str(exc)}) from exc
        return data


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    form = BotForm
    list_display = (
        "name", "strategy", "instrument", "timeframe", "mode", "status", "equity",
        "last_processed_at", "owner",
    )  # fmt: skip
    list_filter = ("status", "mode", "strategy", "timeframe", "instrument")
    search_fields = ("name", "strategy", "instrument__symbol", "owner__username")
    list_select_related = ("instrument__exchange", "owner")
    readonly_fields = (
        "status", "status_reason", "last_processed_at", "cash", "equity", "paper_book",
        "risk_state", "reconciled_at", "created_at", "updated_at",
    )  # fmt: skip
    actions = ("start_bots", "stop_bots")

    def save_model(self, request, obj: Bot, form, change: bool) -> None:
        if not change:
            services.book_reset(obj)
        super().save_model(request, obj, form, change)
        if not change:
            Position.objects.get_or_create(bot=obj)
            BotEvent.objects.create(
                bot=obj, kind=BotEvent.Kind.CREATED, actor=request.user, message="admin"
            )

    @admin.action(description="Start the selected bots")
    def start_bots(self, request, queryset) -> None:
        manager = BotManager()
        started = 0
        for bot in queryset:
            try:
                started += manager.start_bot(bot.pk, actor=request.user)
            except services.BotStateError as exc:
                self.message_user(request, f"{bot}: {exc}", messages.ERROR)
        self.message_user(request, f"{started} bot(s) started.")

    @admin.action(description="Stop the selected bots")
    def stop_bots(self, request, queryset) -> None:
        manager = BotManager()
        stopped = sum(manager.stop_bot(bot.pk, actor=request.user) for bot in queryset)
        self.message_user(request, f"{stopped} bot(s) stopped.")


@admin.register(Signal)
class SignalAdmin(ReadOnlyAdmin):
    list_display = ("time", "bot", "action", "price", "strength", "executed", "no_order_reason")
    list_filter = ("action", "executed", "bot")
    search_fields = ("bot__name", "reason", "no_order_reason")
    list_select_related = ("bot",)
    date_hierarchy = "time"


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "client_order_id", "bot", "side", "type", "reason", "status", "quantity", "price",
        "time", "updated_at",
    )  # fmt: skip
    list_filter = ("status", "side", "type", "bot")
    search_fields = ("client_order_id", "exchange_order_id", "bot__name")
    list_select_related = ("bot",)


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    list_display = ("time", "bot", "side", "quantity", "price", "fee", "order")
    list_filter = ("side", "bot")
    search_fields = ("order__client_order_id", "bot__name")
    list_select_related = ("bot", "order")


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "bot", "entry_time", "exit_time", "quantity", "entry_price", "exit_price", "pnl",
        "return_fraction", "exit_reason",
    )  # fmt: skip
    list_filter = ("exit_reason", "bot")
    search_fields = ("bot__name",)
    list_select_related = ("bot",)


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = ("bot", "quantity", "entry_price", "entry_time", "mark_price", "unrealized_pnl")
    search_fields = ("bot__name",)
    list_select_related = ("bot",)


@admin.register(BotEvent)
class BotEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "bot", "kind", "actor", "message")
    list_filter = ("kind", "bot")
    search_fields = ("bot__name", "message", "actor__username")
    list_select_related = ("bot", "actor")


@admin.register(RiskBudget)
class RiskBudgetAdmin(admin.ModelAdmin):
    list_display = ("owner", "max_exposure", "kill_switch_at", "updated_at")
    search_fields = ("owner__username",)
    readonly_fields = ("kill_switch_at", "updated_at")
    actions = ("engage_kill_switch", "release_kill_switch")

    @admin.action(description="Engage the kill switch (stop all bots, cancel orders)")
    def engage_kill_switch(self, request, queryset) -> None:
        for budget in queryset.select_related("owner"):
            result = BotManager().kill_switch(budget.owner, actor=request.user)
            self.message_user(
                request,
                f"{budget.owner}: {result['bots_stopped']} bot(s) stopped, "
                f"{result['orders_cancelled']} order(s) cancelled.",
            )

    @admin.action(description="Release the kill switch")
    def release_kill_switch(self, request, queryset) -> None:
        for budget in queryset.select_related("owner"):
            services.kill_switch_release(user=budget.owner, actor=request.user)
        self.message_user(request, "Released.")
