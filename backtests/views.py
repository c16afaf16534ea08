"""Backtest and optimisation pages: thin views over ``backtests.services`` (writes) and
``backtests.selectors`` (reads). Every page needs a signed-in user and shows only the user's own
runs (staff: all); another user's run is a 404."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from backtests import selectors, services
from backtests.forms import METRIC_LABELS, SEP, BacktestForm, OptimizationForm
from backtests.models import FINISHED, BacktestRun, OptimizationRun, RunStatus
from marketdata.models import Instrument
from strategies.base import StrategyParameterError

LIST_PAGE = 50
TRADES_PAGE = 100
#: Rows of an optimisation's table on its page (the API pages through all of them).
RESULTS_ROWS = 500

# How each stored metric is shown: label and format ("pct" fraction as percent, "ratio",
# "money", "int", "bars").
METRIC_TILES = (
    ("total_return", "Total return", "pct"),
    ("cagr", "CAGR", "pct"),
    ("sharpe", "Sharpe", "ratio"),
    ("sortino", "Sortino", "ratio"),
    ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration", "Longest drawdown", "bars"),
    ("win_rate", "Win rate", "pct"),
    ("profit_factor", "Profit factor", "ratio"),
    ("expectancy", "Expectancy", "money"),
    ("exposure", "Exposure", "pct"),
    ("n_trades", "Trades", "int"),
    ("open_trades", "Open at end", "int"),
    ("final_equity", "Final equity", "money"),
    ("total_fees", "Fees", "money"),
)
#: Metrics whose sign is good or bad news (coloured).
SIGNED_METRICS = frozenset({"total_return", "cagr", "sharpe", "sortino", "expectancy"})


def format_metric(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "—"
    number = float(value)
    if kind == "pct":
        return f"{number * 100:,.2f}%"
    if kind == "ratio":
        return f"{number:,.2f}"
    if kind == "money":
        return f"{number:,.2f}"
    if kind == "bars":
        return f"{int(number):,} bars"
    return f"{int(number):,}"


def metric_tiles(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored metrics as tiles ``{key, label, text, value, cls}``, in a fixed order."""
    tiles = []
    for key, label, kind in METRIC_TILES:
        if key not in metrics:
            continue
        value = metrics[key]
        cls = ""
        if key in SIGNED_METRICS and isinstance(value, int | float):
            cls = "pos" if value > 0 else "neg" if value < 0 else ""
        tiles.append({"key": key, "label": label, "value": value,
                      "text": format_metric(value, kind), "cls": cls})  # fmt: skip
    return tiles


def _everyone(request: HttpRequest) -> bool:
    return bool(request.user.is_staff and request.GET.get("all") == "1")


# --- backtests ----------------------------------------------------------------------------------


@login_required
@require_GET
def backtest_list(request: HttpRequest) -> HttpResponse:
    everyone = _everyone(request)
    runs = selectors.backtest_list_for_user(request.user, everyone=everyone)
    page = Paginator(runs, LIST_PAGE).get_page(request.GET.get("page"))
    return render(request, "backtests/list.html", {"page": page, "everyone": everyone})


def _backtest_initial(request: HttpRequest) -> dict[str, Any]:
    """Initial values: a re-run (``?from=<backtest>``), the best or a chosen combination of an
    optimisation (``?optimization=<id>[&result=<id>]``), else the first instrument's candles."""
    if source := request.GET.get("from"):
        run = get_object_or_404(selectors.backtests_visible_to(request.user), pk=_int(source))
        return BacktestForm.initial_from(run, run.parameters)
    if source := request.GET.get("optimization"):
        opt = get_object_or_404(selectors.optimizations_visible_to(request.user), pk=_int(source))
        parameters = opt.best_parameters
        if result := request.GET.get("result"):
            parameters = get_object_or_404(opt.results, pk=_int(result)).parameters
        return BacktestForm.initial_from(opt, parameters)
    return _default_market()


def _default_market() -> dict[str, Any]:
    instrument = Instrument.objects.order_by("-active", "exchange__ccxt_id", "symbol").first()
    if instrument is None:
        return {}
    initial: dict[str, Any] = {"instrument": instrument.pk, "timeframe": "1h"}
    if period := selectors.period_default(instrument_id=instrument.pk, timeframe="1h"):
        initial["start"], initial["end"] = period
    return initial


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


@login_required
def backtest_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = BacktestForm(request.POST)
        if form.is_valid():
            try:
                run = services.backtest_create(
                    user=request.user, parameters=form.parameters(), **form.run_fields()
                )
            except StrategyParameterError as exc:
                form.add_strategy_error(exc)
            except ValueError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Backtest #{run.pk} queued.")
                return redirect("backtests:detail", pk=run.pk)
    else:
        form = BacktestForm(initial=_backtest_initial(request))
    period_fixed = form.is_bound or "from" in request.GET or "optimization" in request.GET
    return render(request, "backtests/form.html", {"form": form, "period_fixed": period_fixed})


@login_required
@require_GET
def candle_range(request: HttpRequest) -> JsonResponse:
    """The stored candles' first and last close time of an instrument and timeframe: the form's
    default period (``{"first": iso|null, "last": iso|null}``)."""
    instrument = get_object_or_404(Instrument, pk=_int(request.GET.get("instrument", "")))
    timeframe = request.GET.get("timeframe", "")
    if timeframe not in dict(BacktestRun._meta.get_field("timeframe").choices):
        return JsonResponse({"error": "unknown timeframe"}, status=400)
    first, last = selectors.candle_range(instrument_id=instrument.pk, timeframe=timeframe)
    return JsonResponse({
        "first": first.isoformat() if first else None, "last": last.isoformat() if last else None,
    })  # fmt: skip


@login_required
@require_GET
def backtest_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.backtests_visible_to(request.user), pk=pk)
    context: dict[str, Any] = {"run": run, "finished": run.status in FINISHED,
                               "ws_path": f"/ws/backtest/{run.pk}"}  # fmt: skip
    if run.status == RunStatus.DONE:
        trades = selectors.backtest_trades(run)
        context |= {
            "tiles": metric_tiles(run.metrics),
            "charts": selectors.backtest_charts(run),
            "trades_page": Paginator(trades, TRADES_PAGE).get_page(request.GET.get("trades")),
            "trades_total": len(trades),
        }
    return render(request, "backtests/detail.html", context)


@login_required
@require_POST
def backtest_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.backtests_visible_to(request.user), pk=pk)
    _cancel(request, run, "Backtest")
    return redirect("backtests:detail", pk=run.pk)


def _cancel(request: HttpRequest, run: BacktestRun | OptimizationRun, noun: str) -> None:
    if services.run_cancel(run=run):
        messages.success(request, f"{noun} #{run.pk} cancelled.")
    else:
        run.refresh_from_db(fields=["status"])
        messages.error(request, f"{noun} #{run.pk} is {run.status} already.")


# --- optimisations ------------------------------------------------------------------------------


@login_required
@require_GET
def optimization_list(request: HttpRequest) -> HttpResponse:
    everyone = _everyone(request)
    runs = selectors.optimization_list_for_user(request.user, everyone=everyone)
    page = Paginator(runs, LIST_PAGE).get_page(request.GET.get("page"))
    return render(
        request, "backtests/optimization_list.html",
        {"page": page, "everyone": everyone, "objective_labels": METRIC_LABELS},
    )  # fmt: skip


@login_required
def optimization_create(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = OptimizationForm(request.POST)
        if form.is_valid():
            try:
                run = services.optimization_create(user=request.user, **form.optimization_fields())
            except ValidationError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Optimisation #{run.pk} queued.")
                return redirect("backtests:optimization-detail", pk=run.pk)
    else:
        initial = _default_market()
        if source := request.GET.get("from"):
            visible = selectors.optimizations_visible_to(request.user)
            initial = _optimization_initial(get_object_or_404(visible, pk=_int(source)))
        form = OptimizationForm(initial=initial)
    period_fixed = form.is_bound or "from" in request.GET
    return render(
        request, "backtests/optimization_form.html", {"form": form, "period_fixed": period_fixed}
    )


def _optimization_initial(run: OptimizationRun) -> dict[str, Any]:
    """Initial values repeating ``run`` (its space as lists)."""
    initial = BacktestForm.initial_from(run, {})
    initial |= {
        "method": run.method, "objective": run.objective, "n_iter": run.n_iter,
        "seed": run.seed, "train_bars": run.train_bars, "test_bars": run.test_bars,
    }  # fmt: skip
    for name, values in (run.space or {}).items():
        if isinstance(values, list):
            text = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
            initial[f"{run.strategy}{SEP}{name}{SEP}values"] = text
    return initial


@login_required
@require_GET
def optimization_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.optimizations_visible_to(request.user), pk=pk)
    context: dict[str, Any] = {
        "run": run, "finished": run.status in FINISHED, "ws_path": f"/ws/optimization/{run.pk}",
        "objective_label": METRIC_LABELS.get(run.objective, run.objective),
        "backtest_url": reverse("backtests:create") + f"?optimization={run.pk}",
    }  # fmt: skip
    if run.best_metrics:
        context["tiles"] = metric_tiles(run.best_metrics)
    if run.method == OptimizationRun.Method.WALK_FORWARD:
        context["walk_forward"] = selectors.walk_forward_view(run)
    elif run.status in (RunStatus.DONE, RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED):
        rows, total = selectors.optimization_results(run, limit=RESULTS_ROWS)
        context |= {
            "names": selectors.parameter_names(run),
            "results": rows,
            "results_total": total,
            "heatmap": selectors.optimization_heatmap(run) if total else None,
        }
    return render(request, "backtests/optimization_detail.html", context)


@login_required
@require_POST
def optimization_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.optimizations_visible_to(request.user), pk=pk)
    _cancel(request, run, "Optimisation")
    return redirect("backtests:optimization-detail", pk=run.pk)
