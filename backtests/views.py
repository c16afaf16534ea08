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
from django.utils.html import format_html_join
from django.views.decorators.http import require_GET, require_POST

from backtests import selectors, services
from backtests.forms import METRIC_LABELS, SEP, BacktestForm, OptimizationForm
from backtests.models import FINISHED, BacktestRun, OptimizationRun, RunStatus
from backtests.templatetags.backtests_tags import number, raw
from marketdata.models import Instrument
from strategies.base import StrategyParameterError
from tradeapp import limits

LIST_PAGE = 50
TRADES_PAGE = 100
#: Walk-forward windows per page of an optimisation's page.
WINDOWS_PAGE = 100

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
    status = 200
    if request.method == "POST":
        form = BacktestForm(request.POST)
        if form.is_valid():
            try:
                run = services.backtest_create(
                    user=request.user, parameters=form.parameters(), **form.run_fields()
                )
            except StrategyParameterError as exc:
                form.add_strategy_error(exc)
            except ValidationError as exc:  # the engine's settings, the user's limits
                form.add_service_errors(exc)
                status = limits.page_status(exc)
            except ValueError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Backtest #{run.pk} queued.")
                return redirect("backtests:detail", pk=run.pk)
    else:
        form = BacktestForm(initial=_backtest_initial(request))
    period_fixed = form.is_bound or "from" in request.GET or "optimization" in request.GET
    context = {"form": form, "period_fixed": period_fixed}
    return render(request, "backtests/form.html", context, status=status)


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
    status = 200
    if request.method == "POST":
        form = OptimizationForm(request.POST)
        if form.is_valid():
            try:
                run = services.optimization_create(user=request.user, **form.optimization_fields())
            except ValidationError as exc:  # keyed by field; the user's limits included
                form.add_service_errors(exc)
                status = limits.page_status(exc)
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
        request, "backtests/optimization_form.html", {"form": form, "period_fixed": period_fixed},
        status=status,
    )  # fmt: skip


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


#: The metric columns of an optimisation's results table after the objective: key, heading.
RESULT_METRICS = (
    ("total_return", "Return"),
    ("sharpe", "Sharpe"),
    ("max_drawdown", "Max DD"),
    ("win_rate", "Win rate"),
    ("n_trades", "Trades"),
)


#: One heatmap cell (``table.heatmap td.cell``, see ``static/js/optimization.js``).
HEATMAP_CELL = (
    '<td class="cell {}" data-x="{}" data-y="{}" data-value="{}" title="{}={}, {}={}: {}{}">{}</td>'
)


def _heatmap(run: OptimizationRun) -> dict[str, Any] | None:
    """The run's heatmap (``selectors.optimization_heatmap``) with each row's cells as one
    piece of escaped HTML (``row["html"]``): 3,600 cells through the template engine cost ten
    times more (some 40,000 variable nodes) than ``format_html_join``."""
    heatmap = selectors.optimization_heatmap(run)
    if heatmap is None:
        return None
    x_name, y_name = heatmap["x"], heatmap["y"]
    for row in heatmap["rows"]:
        y = row["y"]
        cells = []
        for cell in row["cells"]:
            value, count = cell["value"], cell["count"]
            level = "empty" if cell["level"] is None else f"h{cell['level']}"
            best_of = f" (best of {count})" if count > 1 else ""
            title = (x_name, cell["x"], y_name, y, number(value, 4), best_of)
            cells.append((level, cell["x"], y, raw(value), *title, number(value, 3)))
        row["html"] = format_html_join("", HEATMAP_CELL, cells)
    return heatmap


def _sort_heading(key: str, label: str, current: str, *, metric: bool) -> dict[str, Any]:
    """A results-table heading that sorts every combination on the server: the column sorted
    now links to the other direction; another column to its best values first (a metric) or
    ascending (a parameter). ``aria`` marks the sorted column's direction."""
    if current.removeprefix("-") == key:
        target = key if current.startswith("-") else f"-{key}"
        aria = "descending" if current.startswith("-") else "ascending"
    else:
        target = selectors.best_first(key) if metric else key
        aria = ""
    return {"key": key, "label": label, "sort": target, "aria": aria}


@login_required
@require_GET
def optimization_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """An optimisation's page. However many combinations it evaluated, the page stays small:
    the results table is one page of ``RESULTS_PAGE`` rows ranked in the database
    (``?sort=``, ``?page=``; a bad value gets the default), the heatmap at most
    ``HEATMAP_BINS`` by ``HEATMAP_BINS`` cells, walk-forward windows paged as well."""
    run = get_object_or_404(selectors.optimizations_visible_to(request.user), pk=pk)
    context: dict[str, Any] = {
        "run": run, "finished": run.status in FINISHED, "ws_path": f"/ws/optimization/{run.pk}",
        "objective_label": METRIC_LABELS.get(run.objective, run.objective),
        "backtest_url": reverse("backtests:create") + f"?optimization={run.pk}",
    }  # fmt: skip
    if run.best_metrics:
        context["tiles"] = metric_tiles(run.best_metrics)
    if run.method == OptimizationRun.Method.WALK_FORWARD:
        if walk_forward := selectors.walk_forward_view(run):
            windows = Paginator(walk_forward["windows"], WINDOWS_PAGE)
            context["windows_page"] = windows.get_page(request.GET.get("page"))
        context["walk_forward"] = walk_forward
    elif run.status in (RunStatus.DONE, RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED):
        sort = selectors.results_sort(run, request.GET.get("sort"))
        page = selectors.results_page(run, sort=sort, page=request.GET.get("page"))
        names = selectors.parameter_names(run)
        total = page.paginator.count
        direction = "highest first" if sort.startswith("-") else "lowest first"
        context |= {
            "names": names,
            "sort": sort,
            "sort_label": f"{sort.removeprefix('-')}, {direction}",
            "default_sort": selectors.best_first(run.objective),
            "param_headings": [_sort_heading(n, n, sort, metric=False) for n in names],
            "objective_heading": _sort_heading(run.objective, run.objective, sort, metric=True),
            "metric_headings": [
                _sort_heading(key, label, sort, metric=True) for key, label in RESULT_METRICS
            ],
            "results_page": page,
            "results": page.object_list,
            "results_total": total,
            "heatmap": _heatmap(run) if total else None,
        }
    return render(request, "backtests/optimization_detail.html", context)


@login_required
@require_POST
def optimization_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(selectors.optimizations_visible_to(request.user), pk=pk)
    _cancel(request, run, "Optimisation")
    return redirect("backtests:optimization-detail", pk=run.pk)
