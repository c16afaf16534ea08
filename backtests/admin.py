import json
import logging

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import F
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from backtests import services
from backtests.models import BacktestRun, OptimizationChunk, OptimizationResult, OptimizationRun
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError, available, get_strategy
from tradeapp import limits

logger = logging.getLogger(__name__)

REPRO_FIELDS = (
    "data_first", "data_last", "data_bars", "data_hash", "strategy_version", "engine_version",
)  # fmt: skip


class StrategyChoiceForm(forms.ModelForm):
    """Strategy picked from the registry; parameters checked against its schema. A new run is
    the signed-in staff member's (``owner``, set by ``RunAdmin.get_form``): their limits on
    runs at once are checked here too, so that a refusal is shown on the form (the service
    checks again, under the lock, when the run is stored)."""

    strategy = forms.ChoiceField(choices=())
    #: Who the new run will belong to (``RunAdmin.get_form``).
    owner = None

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
        if self.owner is not None and self.instance.pk is None and not self.errors:
            try:
                self.check_limits(data)
            except limits.LimitExceeded as exc:
                self.add_error(None, exc.messages)
        return data

    def check_limits(self, data: dict) -> None:
        """The owner's limits on a new backtest: its bars, then runs at once."""
        owner = self.owner
        limits.check_bars(
            limits.limits_for(owner), data.get("start"), data.get("end"), data.get("timeframe")
        )
        limits.check_research_runs(owner, lock=False)


class OptimizationRunForm(StrategyChoiceForm):
    """The strategy form, and the optimisation's own checks (``optimization_validate``: the
    search space against the strategy, its size, the objective, walk-forward windows) shown
    next to the fields instead of failing on save."""

    def check_limits(self, data: dict) -> None:
        # The sizes (bars, combinations) are optimization_validate's, below.
        limits.check_research_runs(self.owner, lock=False)

    def clean(self):
        data = super().clean()
        if self.instance.pk or self.errors:
            return data
        run = OptimizationRun(**{
            field.name: data[field.name]
            for field in OptimizationRun._meta.concrete_fields
            if field.name in data
        })  # fmt: skip
        run.owner = self.owner  # whose limits apply (None: the defaults)
        try:
            services.optimization_validate(run=run)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, errors)
        return data


class RunAdmin(admin.ModelAdmin):
    list_filter = (
        "status",
        "strategy",
        "timeframe",
        ("instrument", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("=id", "strategy", "instrument__symbol", "owner__username")
    list_select_related = ("instrument__exchange", "owner")
    autocomplete_fields = ("instrument",)
    readonly_fields = (
        "owner", "status", "progress", "error", "task_id", "attempts", "heartbeat_at",
        "created_at", "started_at", "finished_at", *REPRO_FIELDS,
    )  # fmt: skip
    actions = ("rerun_runs", "cancel_runs")
    #: ``backtests.services`` function making a new queued run with a stored run's settings.
    rerun = staticmethod(services.backtest_rerun)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.owner = request.user  # a class of this request's own (modelform_factory)
        return form

    @admin.action(description="Cancel the selected runs (queued or running)")
    def cancel_runs(self, request, queryset) -> None:
        cancelled = sum(services.run_cancel(run=run) for run in queryset)
        finished = queryset.count() - cancelled
        self.message_user(
            request, f"{cancelled} run(s) cancelled, {finished} had finished already."
        )

    @admin.action(description="Re-run the selected runs (new queued runs, same settings)")
    def rerun_runs(self, request, queryset) -> None:
        made = []
        for run in queryset.order_by("pk"):
            try:
                made.append(self.rerun(run=run).pk)
            except limits.LimitExceeded as exc:  # the owner's limits: the run is theirs
                text = "; ".join(exc.messages)
                if exc.limit == "concurrent_runs":
                    text = (
                        f"{run.owner} has {exc.value} research runs queued or running (their "
                        f"limit is {exc.maximum}); re-run it when one has finished"
                    )
                self.message_user(request, f"#{run.pk}: {text}", messages.ERROR)
            except (ValidationError, ValueError, KeyError) as exc:
                # A strategy or parameter no longer accepted (the run was validated again).
                text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
                self.message_user(request, f"#{run.pk}: {text}", messages.ERROR)
            except Exception as exc:
                logger.exception("admin: re-running %s failed", run)
                self.message_user(
                    request, f"#{run.pk}: {type(exc).__name__}: {exc}", messages.ERROR
                )
        if made:
            ids = ", ".join(f"#{pk}" for pk in made)
            self.message_user(request, f"{len(made)} run(s) queued again: {ids}.", messages.SUCCESS)

    def get_readonly_fields(self, request, obj=None):
        # A run is a record: once submitted only its status moves.
        if obj is not None:
            # The compact results (binary, megabytes) are read through the pages and the API.
            shown = [
                f.name
                for f in self.model._meta.fields
                if f.name != "id" and not isinstance(f, models.BinaryField)
            ]
            return [*shown, *self.extra_readonly]
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


#: Rows of the best results shown on an optimisation's page (all of them: the results' list).
BEST_RESULTS = 20


@admin.register(OptimizationRun)
class OptimizationRunAdmin(RunAdmin):
    form = OptimizationRunForm
    list_display = (
        "id", "method", "strategy", "instrument", "timeframe", "status", "progress",
        "combinations", "objective", "owner", "created_at",
    )  # fmt: skip
    list_filter = ("method", *RunAdmin.list_filter)
    # A grid may hold 100,000 combinations: the page shows the best ones (an inline would
    # render them all) and links to the results' list.
    extra_readonly = ("best_results",)
    exclude = ("chunks_total", "chunks_done", "combinations", "best_parameters", "best_metrics",
               "walk_forward")  # fmt: skip
    rerun = staticmethod(services.optimization_rerun)

    @admin.display(description="best results")
    def best_results(self, obj: OptimizationRun) -> str:
        rows = obj.results.order_by(F("objective").desc(nulls_last=True), "id")[:BEST_RESULTS]
        body = format_html_join(
            "", "<tr><td>{}</td><td><code>{}</code></td></tr>",
            ((row.objective, json.dumps(row.parameters, sort_keys=True)) for row in rows),
        )  # fmt: skip
        link = (
            reverse("admin:backtests_optimizationresult_changelist") + f"?run__id__exact={obj.pk}"
        )
        return format_html(
            "<table><thead><tr><th>{}</th><th>parameters</th></tr></thead><tbody>{}</tbody>"
            '</table><p><a href="{}">all {} results</a></p>',
            obj.objective, body, link, obj.results.count(),
        )  # fmt: skip

    def save_model(self, request, obj: OptimizationRun, form, change: bool) -> None:
        if change:
            return
        obj.owner = request.user
        with transaction.atomic():
            limits.check_research_runs(obj.owner)  # the form checked; again under the lock
            services.optimization_submit(run=obj)
        messages.info(request, "The optimisation is queued; this page shows its progress.")


@admin.register(OptimizationResult)
class OptimizationResultAdmin(admin.ModelAdmin):
    """One evaluated combination: written by the workers, never edited."""

    list_display = ("id", "run", "objective", "parameters", "chunk", "worker")
    list_filter = ("run__method", "run__status")
    search_fields = ("=run__id", "run__strategy", "worker")
    list_select_related = ("run",)
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OptimizationChunk)
class OptimizationChunkAdmin(admin.ModelAdmin):
    """Where each chunk of a search is (pending, sent, running on a worker, done) and how often
    it was sent: a chunk sent more than once lost a worker. Written by the workers and the
    watchdog, never edited."""

    list_display = ("id", "run", "index", "state", "sends", "worker", "sent_at", "heartbeat_at",
                    "finished_at")  # fmt: skip
    list_filter = ("state", "run__status")
    search_fields = ("=run__id", "worker")
    list_select_related = ("run",)
    exclude = ("combinations",)
    readonly_fields = ("combinations_count",)
    show_full_result_count = False

    @admin.display(description="combinations")
    def combinations_count(self, obj: OptimizationChunk) -> int:
        return len(obj.combinations or [])

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
