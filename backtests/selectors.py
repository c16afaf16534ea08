"""Read paths of the backtest and optimisation pages: owner-scoped runs, chart-ready equity and
drawdown, the trades table, optimisation result tables and heatmaps, walk-forward windows.

Reads only; the writes are ``backtests.services``.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from django.db.models import F, QuerySet
from django.utils.dateparse import parse_datetime

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


def optimization_results(
    run: OptimizationRun, *, limit: int
) -> tuple[list[OptimizationResult], int]:
    """The best ``limit`` evaluated combinations (objective descending, or ascending for a
    minimised metric; NaN last) and how many there are in all. Each row gets ``values``: its
    parameter values in ``parameter_names`` order (``None`` where missing)."""
    rows = run.results.all()
    objective = F("objective")
    order = (
        objective.asc(nulls_last=True)
        if run.objective in MINIMISED
        else objective.desc(nulls_last=True)
    )
    names = parameter_names(run)
    best = list(rows.order_by(order, "id")[:limit])
    for row in best:
        row.values = [row.parameters.get(name) for name in names]
    return best, rows.count()


def _heat_level(value: float | None, low: float, high: float, minimised: bool) -> int | None:
    if value is None or not np.isfinite(value):
        return None
    share = 0.5 if high <= low else (value - low) / (high - low)
    if minimised:
        share = 1.0 - share
    return min(int(share * HEAT_LEVELS), HEAT_LEVELS - 1)


def optimization_heatmap(run: OptimizationRun) -> dict[str, Any] | None:
    """The objective over a grid whose combinations vary exactly two parameters, as table rows.

    ``None`` when not exactly two parameters vary. Otherwise ``x``/``y``: the two names,
    ``columns``: the x values, ``rows``: ``[{"y": value, "cells": [{"x", "value", "level"}]}]``
    with one cell per (y, x) pair (``value`` ``None`` where the strategy refused the combination
    or the metric is undefined) and ``level`` 0 (worst) .. 9 (best) for the colour.
    """
    rows = list(run.results.values_list("parameters", "objective"))
    if not rows:
        return None
    names = parameter_names(run)
    varying = [n for n in names if len({repr(p.get(n)) for p, _ in rows}) > 1]
    if len(varying) != 2:
        return None
    x_name, y_name = varying
    xs = sorted({p[x_name] for p, _ in rows})
    ys = sorted({p[y_name] for p, _ in rows})
    values = {(p[x_name], p[y_name]): v for p, v in rows}
    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    minimised = run.objective in MINIMISED
    table = []
    for y in ys:
        cells = []
        for x in xs:
            value = values.get((x, y))
            level = _heat_level(value, low, high, minimised)
            cells.append({"x": x, "value": value, "level": level})
        table.append({"y": y, "cells": cells})
    return {"x": x_name, "y": y_name, "columns": xs, "rows": table, "low": low, "high": high}


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
