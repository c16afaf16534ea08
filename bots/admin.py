import logging

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html_join

from bots import services
from bots.brokers import BrokerError
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
from tradeapp import limits
from tradeapp.admin import EstimatedCountPaginator

logger = logging.getLogger(__name__)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the bots (the decision log, orders, fills, trades, the audit trail):
    shown, filtered and searched, never added or edited by hand. They grow with every candle:
    no exact total on every page view, and no list filter over all bots (a bot's rows are
    linked from its line in the bots' list instead: ``?bot__id__exact=``)."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator

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
    # The encrypted columns are not editable model fields: never in a form, never shown.
    readonly_fields = ("credentials", "created_at", "updated_at")
    list_select_related = ("exchange", "owner")
    autocomplete_fields = ("owner",)

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
            "trailing_stop", "cooldown_candles", "max_daily_loss", "fee", "fee_in_base",
            "slippage",
        )  # fmt: skip

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "strategy" in self.fields:
            self.fields["strategy"].choices = [(name, name) for name in available()]

    def clean(self):
        data = super().clean()
        if self.instance.pk and self.instance.status == Bot.Status.RUNNING:
            raise ValidationError("Stop the bot before changing it.")
        if self.instance.pk is None and data.get("owner") is not None:
            try:  # the owner's bots limit (counted again under a lock when the bot is stored)
                limits.check_bots(data["owner"], lock=False)
            except limits.LimitExceeded as exc:
                raise ValidationError(exc.messages) from exc
        # On a change page the strategy is read-only (fixed once the bot exists).
        name = data.get("strategy") if "strategy" in self.fields else self.instance.strategy
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
        "last_processed_at", "owner", "records",
    )  # fmt: skip
    list_filter = (
        "status", "mode", "strategy", "timeframe", ("instrument", admin.RelatedOnlyFieldListFilter),
    )  # fmt: skip
    search_fields = ("name", "strategy", "instrument__symbol", "owner__username")
    list_select_related = ("instrument__exchange", "owner")
    autocomplete_fields = ("owner", "instrument", "account")
    readonly_fields = (
        "status", "status_reason", "last_processed_at", "cash", "equity", "paper_book",
        "risk_state", "reconciled_at", "created_at", "updated_at",
    )  # fmt: skip
    #: Fixed once the bot exists (``bots.services.UPDATABLE`` lists what may change).
    fixed_fields = ("owner", "strategy", "instrument", "timeframe", "mode", "account", "capital")
    actions = ("start_bots", "stop_bots", "adopt_balances")

    @admin.display(description="records")
    def records(self, obj: Bot) -> str:
        links = (
            (reverse(f"admin:bots_{model}_changelist") + f"?bot__id__exact={obj.pk}", label)
            for model, label in (("signal", "signals"), ("order", "orders"),
                                 ("trade", "trades"), ("botevent", "events"))
        )  # fmt: skip
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    def get_readonly_fields(self, request, obj: Bot | None = None):
        if obj is None:
            return self.readonly_fields
        fields = [*self.readonly_fields, *self.fixed_fields]
        if obj.status == Bot.Status.RUNNING:  # stop it first: nothing changes while it trades
            fields += BotForm.Meta.fields
        return list(dict.fromkeys(fields))

    def save_model(self, request, obj: Bot, form, change: bool) -> None:
        if change:
            # Through the manager: validated again, audited (a state_updated event), and
            # refused by the service if the bot started meanwhile.
            changes = {
                name: form.cleaned_data[name]
                for name in form.changed_data
                if name in services.UPDATABLE
            }
            if changes:
                BotManager().update_bot_state(obj.pk, changes, actor=request.user)
                obj.refresh_from_db()
            return
        limits.check_bots(obj.owner)  # under the owner's row lock (the admin's transaction)
        services.book_reset(obj)
        super().save_model(request, obj, form, change)
        Position.objects.get_or_create(bot=obj)
        BotEvent.objects.create(
            bot=obj, kind=BotEvent.Kind.CREATED, actor=request.user, message="admin"
        )

    def _each(self, request, queryset, act, verb: str, state: str) -> None:
        """``act(bot)`` for each selected bot; one message with the counts, one per failure
        (reported, never raised: the other bots still get their turn)."""
        done = unchanged = failed = 0
        for bot in queryset.order_by("pk"):
            try:
                if act(bot):
                    done += 1
                else:
                    unchanged += 1
            except services.BotStateError as exc:
                failed += 1
                self.message_user(request, f"{bot}: {exc}", messages.ERROR)
            except Exception as exc:
                logger.exception("admin: %s bot %s failed", verb, bot.pk)
                failed += 1
                self.message_user(request, f"{bot}: {type(exc).__name__}: {exc}", messages.ERROR)
        level = messages.WARNING if failed else messages.SUCCESS
        self.message_user(
            request, f"{done} bot(s) {verb}, {unchanged} already {state}, {failed} failed.", level
        )

    @admin.action(description="Start the selected bots")
    def start_bots(self, request, queryset) -> None:
        manager = BotManager()
        self._each(request, queryset, lambda bot: manager.start_bot(bot.pk, actor=request.user),
                   "started", "running")  # fmt: skip

    @admin.action(description="Stop the selected bots (cancels their open orders)")
    def stop_bots(self, request, queryset) -> None:
        manager = BotManager()
        self._each(request, queryset, lambda bot: manager.stop_bot(bot.pk, actor=request.user),
                   "stopped", "stopped")  # fmt: skip

    @admin.action(description="Live bots: adopt the exchange account's balance (resolves a "
                  "balance mismatch)")  # fmt: skip
    def adopt_balances(self, request, queryset) -> None:
        import ccxt  # only where live trading happens (as bots.brokers.broker_for)

        from bots.reconcile import BalanceError, balance_adopt

        for bot in queryset.order_by("pk"):
            try:
                message = balance_adopt(bot_id=bot.pk, actor=request.user)
            except (BalanceError, BrokerError, ccxt.BaseError) as exc:
                self.message_user(request, f"{bot}: not adopted: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{bot}: {message}", messages.SUCCESS)


@admin.register(Signal)
class SignalAdmin(ReadOnlyAdmin):
    list_display = ("time", "bot", "action", "price", "strength", "executed", "no_order_reason")
    list_filter = ("action", "executed", "bot__mode")
    search_fields = ("bot__name", "reason", "no_order_reason")
    list_select_related = ("bot",)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "client_order_id", "bot", "side", "type", "reason", "status", "quantity", "price",
        "time", "updated_at",
    )  # fmt: skip
    list_filter = ("status", "side", "type", "reason", "bot__mode")
    search_fields = ("client_order_id", "exchange_order_id", "bot__name")
    list_select_related = ("bot",)


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    list_display = (
        "time", "bot", "side", "quantity", "price", "fee_cost", "fee_currency", "fee", "order",
    )  # fmt: skip
    list_filter = ("side", "bot__mode")
    search_fields = ("order__client_order_id", "exchange_trade_id", "bot__name")
    list_select_related = ("bot", "order")


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "bot", "entry_time", "exit_time", "quantity", "entry_price", "exit_price", "pnl",
        "return_fraction", "exit_reason",
    )  # fmt: skip
    list_filter = ("exit_reason", "bot__mode")
    search_fields = ("bot__name",)
    list_select_related = ("bot",)


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = (
        "bot", "quantity", "dust", "entry_price", "entry_time", "mark_price", "unrealized_pnl",
        "updated_at",
    )  # fmt: skip
    list_filter = ("bot__status", "bot__mode")
    search_fields = ("bot__name",)
    list_select_related = ("bot",)


@admin.register(BotEvent)
class BotEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "bot", "kind", "actor", "message")
    list_filter = ("kind", "bot__mode")
    search_fields = ("bot__name", "message", "actor__username")
    list_select_related = ("bot", "actor")


@admin.register(RiskBudget)
class RiskBudgetAdmin(admin.ModelAdmin):
    list_display = ("owner", "max_exposure", "kill_switch_at", "updated_at")
    list_filter = (("kill_switch_at", admin.EmptyFieldListFilter),)
    search_fields = ("owner__username",)
    readonly_fields = ("kill_switch_at", "updated_at")
    autocomplete_fields = ("owner",)
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
