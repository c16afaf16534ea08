import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.html import format_html

from backtests import services
from backtests.models import BacktestRun, OptimizationResult, OptimizationRun
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError, available, get_strategy

REPRO_FIELDS = (
    "data_first", "data_last", "data_bars", "data_hash", "strategy_version", "engine_version",
)  # fmt: skip


class StrategyChoiceForm(forms.ModelForm):
    """Strategy picked from the registry; parameters checked against its schema."""

    strategy = forms.ChoiceField(choices=())

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "strategy" in self.fields:  # absent on a submitted run's (read-only) page
            self.fields["strategy"].choices = [(name, name) for name in available()]

    def clean(self):
        data = super().clean()
        name = data.get("strategy")
        if name and "parameters" in self.fields:
            try:
                data["parameters"] = dict(
                    get_strategy(name)(data.get("parameters") or {}).parameters
                )
            except StrategyParameterError as exc:
                raise ValidationError({"parameters": str(exc)}) from exc
            except UnknownStrategyError as exc:
                raise ValidationError({"strategy": str(exc)}) from exc
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            raise ValidationError({"end": "The end must be after the start."})
        return data


class RunAdmin(admin.ModelAdmin):
    list_filter = ("status", "strategy", "timeframe", "instrument")
    search_fields = ("strategy", "instrument__symbol", "owner__username")
    list_select_related = ("instrument__exchange", "owner")
    readonly_fields = (
        "owner", "status", "progress", "error", "task_id", "created_at", "started_at",
        "finished_at", *REPRO_FIELDS,
    )  # fmt: skip
    actions = ("cancel_runs",)

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request, queryset) -> None:
        cancelled = sum(services.run_cancel(run=run) for run in queryset)
        self.message_user(request, f"{cancelled} run(s) cancelled.")

    def get_readonly_fields(self, request, obj=None):
        # A run is a record: once submitted only its status moves.
        if obj is not None:
            return [f.name for f in self.model._meta.fields if f.name != "id"] + list(
                self.extra_readonly
            )
        return self.readonly_fields


@admin.register(BacktestRun)
class BacktestRunAdmin(RunAdmin):
    form = StrategyChoiceForm
    list_display = (
        "id", "strategy", "instrument", "timeframe", "status", "progress", "total_return",
        "trades_count", "owner", "created_at",
    )  # fmt: skip
    extra_readonly = ("metrics_table",)
    exclude = ("equity_blob", "trades_blob", "trades_count", "metrics")

    @admin.display(description="total return")
    def total_return(self, obj: BacktestRun) -> str:
        value = (obj.metrics or {}).get("total_return")
        return "" if value is None else f"{value:.2%}"

    @admin.display(description="metrics")
    def metrics_table(self, obj: BacktestRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.metrics, indent=2, sort_keys=True))

    def save_model(self, request, obj: BacktestRun, form, change: bool) -> None:
        if change:
            return
        obj.owner = request.user
        with transaction.atomic():
            services.backtest_submit(run=obj)
        messages.info(request, "The backtest is queued; this page shows its progress.")


class OptimizationResultInline(admin.TabularInline):
    model = OptimizationResult
    fields = ("objective", "parameters", "metrics", "worker")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-objective",)
    max_num = 0


@admin.register(OptimizationRun)
class OptimizationRunAdmin(RunAdmin):
    form = StrategyChoiceForm
    list_display = (
        "id", "method", "strategy", "instrument", "timeframe", "status", "progress",
        "combinations", "objective", "owner", "created_at",
    )  # fmt: skip
    extra_readonly = ()
    exclude = ("chunks_total", "chunks_done", "combinations", "best_parameters", "best_metrics",
               "walk_forward")  # fmt: skip
    inlines = (OptimizationResultInline,)

    def save_model(self, request, obj: OptimizationRun, form, change: bool) -> None:
        if change:
            return
        obj.owner = request.user
        with transaction.atomic():
            services.optimization_submit(run=obj)
        messages.info(request, "The optimisation is queued; this page shows its progress.")
