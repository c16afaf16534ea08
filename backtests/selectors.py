"""Read paths of the backtest and optimisation pages: owner-scoped runs, chart-ready equity and
drawdown, the trades table, optimisation result tables and heatmaps, walk-forward windows.

Reads only; the writes are ``backtests.services``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import F, FloatField, QuerySet
from django.db.models.fields.json import KT, KeyTransform
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from backtests.metrics import METRIC_NAMES
from backtests.models import BacktestRun, OptimizationResult, OptimizationRun
from backtests.optimize import MINIMISED
from backtests.services import unpack_equity, unpack_trades
from marketdata.aggregation import parse_timeframe
from marketdata.models import Candle

#: Points per series sent to a page's chart: a year of 1m bars would be 525,600.
CHART_POINTS = 2_000
#: Heatmap colour classes ``h0`` (worst) .. ``h9`` (best), see ``static/css/app.css``.
HEAT_LEVELS = 10


def backtest_list_for_user(user: Any, *, everyone: bool = False) -> QuerySet[BacktestRun]:
    """The user's backtests, newest first; ``everyone`` (staff only) for all users'."""
    runs = BacktestRun.objects.select_related("instrument", "instrument__exchange", "owner")
    runs = runs.defer("equity_blob", "trades_blob")
    return runs.owned_by(user) if everyone and user.is_staff else runs.filter(owner=user)


def optimization_list_for_user(user: Any, *, everyone: bool = False) -> QuerySet[OptimizationRun]:
    """The user's optimisations, newest first; ``everyone`` (staff only) for all users'."""
    runs = OptimizationRun.objects.select_related("instrument", "instrument__exchange", "owner")
    runs = runs.defer("walk_forward")
    return runs.owned_by(user) if everyone and user.is_staff else runs.filter(owner=user)


def backtests_visible_to(user: Any) -> QuerySet[BacktestRun]:
    """Every backtest ``user`` may open (their own; staff all)."""
    return BacktestRun.objects.select_related("instrument", "instrument__exchange").owned_by(user)


def optimizations_visible_to(user: Any) -> QuerySet[OptimizationRun]:
    """Every optimisation ``user`` may open (their own; staff all)."""
    return OptimizationRun.objects.select_related("instrument", "instrument__exchange").owned_by(
        user
    )


def candle_range(*, instrument_id: int, timeframe: str) -> tuple[datetime | None, datetime | None]:
    """Close times of the first and last stored candle (two index lookups, no scan)."""
    candles = Candle.objects.filter(instrument_id=instrument_id, timeframe=timeframe)
    first = candles.order_by("close_time").values_list("close_time", flat=True).first()
    last = candles.order_by("-close_time").values_list("close_time", flat=True).first()
    return first, last


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def run_bar_times(run: BacktestRun | OptimizationRun) -> tuple[np.ndarray, bool]:
    """Close times (epoch ms, int64) of the bars a finished run used, and whether they are exact.

    Exact without a query when the candles had no gap (``data_bars`` equals the bars between
    ``data_first`` and ``data_last``); otherwise read from the candles, and when those changed
    since the run (their count differs) spread evenly between the first and last: approximate.
    """
    n = run.data_bars
    if not n or run.data_first is None or run.data_last is None:
        return np.zeros(0, dtype=np.int64), False
    first, last = _ms(run.data_first), _ms(run.data_last)
    step = parse_timeframe(run.timeframe) * 1000
    if n == 1:
        return np.array([first], dtype=np.int64), True
    if (last - first) == step * (n - 1):
        return first + step * np.arange(n, dtype=np.int64), True
    times = list(
        Candle.objects.filter(
            instrument_id=run.instrument_id,
            timeframe=run.timeframe,
            close_time__gte=run.data_first,
            close_time__lte=run.data_last,
        )
        .order_by("close_time")
        .values_list("close_time", flat=True)
    )
    if len(times) == n:
        return np.array([_ms(t) for t in times], dtype=np.int64), True
    return np.linspace(first, last, n).astype(np.int64), False


def downsample_indices(values: np.ndarray, max_points: int = CHART_POINTS) -> np.ndarray:
    """Positions of ``values`` to draw with at most about ``max_points`` points: the first, the
    last, and the lowest and highest value of each of ``max_points // 2`` equal buckets, so
    peaks and troughs (the drawdown's bottom) survive. NaN values are never picked as extremes."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = max(max_points // 2, 1)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = {0, n - 1}
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        chunk = values[lo:hi]
        if np.isnan(chunk).all():
            keep.add(int(lo))
            continue
        keep.add(int(lo + np.nanargmin(chunk)))
        keep.add(int(lo + np.nanargmax(chunk)))
    return np.array(sorted(keep), dtype=np.int64)


def _points(times: np.ndarray, values: np.ndarray, keep: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"timestamp": int(times[i]), "value": float(values[i])}
        for i in keep
        if np.isfinite(values[i])
    ]


def equity_charts(
    times: np.ndarray, equity: np.ndarray, max_points: int = CHART_POINTS
) -> dict[str, list[dict[str, Any]]]:
    """Equity and drawdown (percent below the running peak, <= 0) as chart points
    ``{timestamp, value}``, both downsampled to the same positions (``downsample_indices`` of
    each, merged: the equity's extremes and the drawdown's bottom are kept)."""
    equity = np.asarray(equity, dtype=np.float64)
    if len(equity) == 0 or len(times) != len(equity):
        return {"equity": [], "drawdown": []}
    peak = np.fmax.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, (equity / peak - 1.0) * 100.0, np.nan)
    keep = np.union1d(
        downsample_indices(equity, max_points), downsample_indices(drawdown, max_points)
    )
    return {"equity": _points(times, equity, keep), "drawdown": _points(times, drawdown, keep)}


def backtest_charts(run: BacktestRun, max_points: int = CHART_POINTS) -> dict[str, Any]:
    """A finished backtest's equity and drawdown points, the bar count and whether the times
    are exact (``run_bar_times``)."""
    equity = unpack_equity(run.equity_blob).to_numpy(dtype=np.float64)
    times, exact = run_bar_times(run)
    charts = equity_charts(times, equity, max_points)
    return {**charts, "bars": len(equity), "exact_times": exact}


def backtest_trades(run: BacktestRun) -> list[dict[str, Any]]:
    """The trades of a finished backtest as dicts: times as aware datetimes (``None`` for a
    position still open), NaN as ``None``."""
    trades = unpack_trades(run.trades_blob)
    rows = []
    for record in trades.to_dict(orient="records"):
        row = {}
        for key, value in record.items():
            if key.endswith("_time"):
                moment = None if value is None or pd.isna(value) else pd.Timestamp(value)
                if moment is not None and moment.tzinfo is None:
                    moment = moment.tz_localize("UTC")
                row[key] = moment.to_pydatetime() if moment is not None else None
            elif isinstance(value, float) and not np.isfinite(value):
                row[key] = None
            else:
                row[key] = value
        rows.append(row)
    return rows


def parameter_names(run: OptimizationRun) -> list[str]:
    """The parameters of the run's strategy, in schema order (the stored rows' own keys if the
    strategy is no longer registered)."""
    from strategies.registry import UnknownStrategyError, get_strategy

    try:
        return [spec.name for spec in get_strategy(run.strategy).parameter_specs]
    except UnknownStrategyError:
        first = run.results.values_list("parameters", flat=True).first() or {}
        return list(first)


#: Rows per page of an optimisation's results table.
RESULTS_PAGE = 50


def result_sort_keys(run: OptimizationRun) -> list[str]:
    """What an optimisation's results may be sorted by: every metric, then the strategy's
    parameters (a parameter named like a metric is not sortable)."""
    return [*METRIC_NAMES, *(n for n in parameter_names(run) if n not in METRIC_NAMES)]


def best_first(metric: str) -> str:
    """The sort that puts ``metric``'s best values first (as ``optimize.rank`` orders)."""
    return metric if metric in MINIMISED else f"-{metric}"


def results_sort(run: OptimizationRun, sort: str | None) -> str:
    """``sort`` when it is a sort key (``key`` ascending, ``-key`` descending, see
    ``result_sort_keys``); anything else gives the default, the objective best first."""
    key = sort or ""
    if key.removeprefix("-") in result_sort_keys(run):
        return key
    return best_first(run.objective)


def ranked_results(run: OptimizationRun, sort: str | None = None) -> QuerySet[OptimizationResult]:
    """The run's results ordered in the database by ``sort`` (``results_sort``): undefined
    values (NaN is stored as null) last in either direction, ties in storage order (``id``).
    With the objective best first this is ``optimize.rank``'s order, read from the
    ``objective`` column; another metric is read from the metrics JSON as a number, a
    parameter as its JSON value."""
    key = results_sort(run, sort)
    name = key.removeprefix("-")
    if name == run.objective:
        value: Any = F("objective")
    elif name in METRIC_NAMES:
        value = Cast(KT(f"metrics__{name}"), FloatField())
    else:
        value = KeyTransform(name, "parameters")
    order = value.desc(nulls_last=True) if key.startswith("-") else value.asc(nulls_last=True)
    return run.results.order_by(order, "id")


def results_page(
    run: OptimizationRun, *, sort: str | None, page: Any, per_page: int = RESULTS_PAGE
) -> Page:
    """One page of ``ranked_results`` (``page`` as ``Paginator.get_page`` takes it: a bad
    number gives the first page, too large the last). The database sorts and skips ids alone
    (a narrow sort, whatever the page), then the page's rows are read by id. Each row gets
    ``position`` (1 = first in this order) and ``values``: its parameter values in
    ``parameter_names`` order."""
    ids = ranked_results(run, sort).values_list("id", flat=True)
    current = Paginator(ids, per_page).get_page(page)
    by_id = run.results.only("id", "run_id", "parameters", "metrics", "objective").in_bulk(
        list(current.object_list)
    )
    current.object_list = [by_id[pk] for pk in current.object_list if pk in by_id]
    names = parameter_names(run)
    for position, row in enumerate(current.object_list, start=current.start_index()):
        row.position = position
        row.values = [row.parameters.get(name) for name in names]
    return current


# --- heatmap ------------------------------------------------------------------------------------

#: Most columns and rows of a heatmap: more distinct values of a parameter are binned.
HEATMAP_BINS = 60


def _heat_levels(values: np.ndarray, minimised: bool) -> tuple[np.ndarray, float, float]:
    """Colour class 0 (worst) .. ``HEAT_LEVELS - 1`` (best) of each value (-1 for NaN), and
    the lowest and highest finite value."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(len(values), -1), 0.0, 0.0
    low, high = float(values[finite].min()), float(values[finite].max())
    share = np.full(len(values), 0.5) if high <= low else (values - low) / (high - low)
    if minimised:
        share = 1.0 - share
    levels = np.minimum((np.nan_to_num(share) * HEAT_LEVELS).astype(int), HEAT_LEVELS - 1)
    return np.where(finite, levels, -1), low, high


def _order(value: Any) -> tuple[bool, bool, Any]:
    """Sort key of parameter values: numbers (and booleans), then text, then missing."""
    return (value is None, isinstance(value, str), 0 if value is None else value)


def _label(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _scalar(raw: Any) -> Any:
    """A parameter value read as JSON text (``->>``): PostgreSQL gives every value as text,
    SQLite numbers as numbers and ``true``/``false`` as text."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # a text value


def _codes(column: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Each value's position among the column's distinct values, and those values in order
    (``_order``). numpy finds the distinct raw values; each is parsed once, not each row's."""
    try:
        distinct_raw, first_seen = np.unique(np.asarray(column), return_inverse=True)
    except TypeError:  # a missing value among numbers: not sortable as one array
        index: dict[Any, int] = {}
        first_seen = np.fromiter(
            (index.setdefault(v, len(index)) for v in column), dtype=np.intp, count=len(column)
        )
        distinct_raw = list(index)
    values = [_scalar(raw.item() if isinstance(raw, np.generic) else raw) for raw in distinct_raw]
    order = sorted(range(len(values)), key=lambda i: _order(values[i]))
    position = np.empty(len(values), dtype=np.intp)
    position[order] = np.arange(len(values))
    return position[first_seen.ravel()], [values[i] for i in order]


def _axis(column: Sequence[Any], max_bins: int) -> tuple[np.ndarray, list[str], int]:
    """Bin a parameter's values: its distinct values in order, cut into runs of (nearly)
    equal numbers of values, as few values per run as keeps to ``max_bins`` runs (250 values
    in 50 runs of 5, not 60 of 4 or 5). Runs of values, not equal widths, so that a log-spaced
    grid or a random search's floats keep their resolution where they are dense. Returns each
    row's bin, the bins' labels (the value, or the first and the last joined by an en dash)
    and the number of distinct values."""
    codes, distinct = _codes(column)
    count = len(distinct)
    per_bin = -(-count // max_bins)
    bins = -(-count // per_bin)
    bin_of = np.arange(count) * bins // count
    starts = np.searchsorted(bin_of, np.arange(bins))
    ends = [*starts[1:], count]
    labels = [
        _label(distinct[s])
        if e - s == 1
        else f"{_label(distinct[s])}\N{EN DASH}{_label(distinct[e - 1])}"
        for s, e in zip(starts, ends, strict=True)
    ]
    return bin_of[codes], labels, count


def _fetch(rows: QuerySet) -> list[tuple[Any, ...]]:
    """The rows of a ``values_list`` query as the database driver returns them: no per-value
    converters (Django's would decode 100,000 JSON values one by one)."""
    sql, params = rows.query.sql_with_params()
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def optimization_heatmap(
    run: OptimizationRun, max_bins: int = HEATMAP_BINS
) -> dict[str, Any] | None:
    """The objective over the two parameters that vary, as table rows of at most ``max_bins``
    by ``max_bins`` cells, whatever the number of combinations.

    ``None`` when not exactly two parameters vary. One query reads the parameter values (as
    JSON text) and the objective of every row, unordered, with no model instances; numpy bins
    and aggregates them. ``x``/``y``: the two names, ``columns``: the x labels, ``rows``:
    ``[{"y": label, "cells": [{"x", "value", "level", "count"}]}]``; a label is a value, or a
    range of values (the first and the last, joined by an en dash) when a parameter has more
    than ``max_bins`` of them (``x_values``/``y_values``: how many). A cell's ``value`` is the
    best objective of its combinations (``count`` of them), ``None`` where there is none (the
    strategy refused them) or the metric is undefined for all; ``level`` 0 (worst) .. 9 (best)
    for the colour.
    """
    names = parameter_names(run)
    columns = [KT(f"parameters__{name}") for name in names]
    rows = _fetch(run.results.order_by().values_list(*columns, "objective"))
    if not rows:
        return None
    # Column by column: ``zip(*rows)`` over 100,000 rows costs twenty times more.
    *params, objectives = (list(map(itemgetter(i), rows)) for i in range(len(names) + 1))
    varying = [i for i, column in enumerate(params) if len(set(column)) > 1]
    if len(varying) != 2:
        return None
    ix, iy = varying
    x_name, y_name = names[ix], names[iy]
    x_codes, x_labels, x_count = _axis(params[ix], max_bins)
    y_codes, y_labels, y_count = _axis(params[iy], max_bins)
    width = len(x_labels)
    cells = y_codes * width + x_codes
    size = width * len(y_labels)
    objective = np.fromiter(
        (np.nan if v is None else v for v in objectives), dtype=np.float64, count=len(objectives)
    )
    minimised = run.objective in MINIMISED
    sign = -1.0 if minimised else 1.0
    scores = np.full(size, -np.inf)
    finite = np.isfinite(objective)
    np.maximum.at(scores, cells[finite], sign * objective[finite])
    best = np.where(np.isfinite(scores), sign * scores, np.nan)
    counts = np.bincount(cells, minlength=size)
    levels, low, high = _heat_levels(best, minimised)
    values = [None if np.isnan(v) else v for v in best.tolist()]
    level_list = [None if level < 0 else level for level in levels.tolist()]
    count_list = counts.tolist()
    table = []
    for y, y_label in enumerate(y_labels):
        row = []
        for x, x_label in enumerate(x_labels):
            at = y * width + x
            row.append({"x": x_label, "value": values[at], "level": level_list[at],
                        "count": count_list[at]})  # fmt: skip
        table.append({"y": y_label, "cells": row})
    return {
        "x": x_name, "y": y_name, "columns": x_labels, "rows": table, "low": low, "high": high,
        "x_values": x_count, "y_values": y_count,
        "binned": x_count > len(x_labels) or y_count > len(y_labels),
    }  # fmt: skip


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, int | float):
        return pd.Timestamp(int(value), unit="ms", tz="UTC").to_pydatetime()
    return parse_datetime(str(value))


def walk_forward_view(
    run: OptimizationRun, max_points: int = CHART_POINTS
) -> dict[str, Any] | None:
    """The walk-forward record of a finished run, for its page: per window the in-sample and
    out-of-sample periods (close times), the chosen parameters and the metrics of both; the
    stitched out-of-sample equity and its drawdown as chart points."""
    record = run.walk_forward or {}
    windows = record.get("windows") or []
    if not windows:
        return None
    times, exact = run_bar_times(run)

    def at(position: Any) -> datetime | None:
        if not isinstance(position, int) or not 0 <= position < len(times):
            return None
        return _parse_time(int(times[position]))

    rows = []
    for window in windows:
        train_end = window.get("train_end")
        rows.append(
            {
                "window": window.get("window"),
                "train_first": at(window.get("train_start")),
                "train_last": at(train_end - 1) if isinstance(train_end, int) else None,
                "train_bars": (train_end or 0) - (window.get("train_start") or 0),
                "test_first": _parse_time(window.get("test_first")),
                "test_last": _parse_time(window.get("test_last")),
                "test_bars": (window.get("test_end") or 0) - (window.get("test_start") or 0),
                "parameters": window.get("parameters") or {},
                "is": {k[3:]: v for k, v in window.items() if k.startswith("is_")},
                "oos": {k[4:]: v for k, v in window.items() if k.startswith("oos_")},
                "is_objective": window.get(f"is_{run.objective}"),
                "oos_objective": window.get(f"oos_{run.objective}"),
            }
        )
    equity = np.array(
        [np.nan if v is None else float(v) for v in record.get("equity") or []], dtype=np.float64
    )
    stamps = record.get("equity_index") or []
    eq_times = np.array(
        [_ms(t) if (t := _parse_time(s)) is not None else 0 for s in stamps], dtype=np.int64
    )
    charts = equity_charts(eq_times, equity, max_points) if len(eq_times) == len(equity) else {}
    return {
        "windows": rows,
        "equity": charts.get("equity", []),
        "drawdown": charts.get("drawdown", []),
        "trades": record.get("trades"),
        "exact_times": exact,
    }


def period_default(*, instrument_id: int, timeframe: str) -> tuple[datetime, datetime] | None:
    """The form's default period: the stored candles' range (``None`` without candles)."""
    first, last = candle_range(instrument_id=instrument_id, timeframe=timeframe)
    if first is None or last is None or last <= first:
        return None
    return first, last
