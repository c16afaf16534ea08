"""The page of a large optimisation: a 100,000-combination grid is ranked and paged in the
database and its heatmap binned, so the page stays small whatever the run's size.

The big run is stored once for the module (``bulk_create`` in batches of 10,000, committed,
deleted afterwards): the page only reads stored rows, and a real sweep of 100,000 combinations
would take minutes. The reference order is ``backtests.optimize.rank`` on the stored rows in
storage order.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from django.db import connection
from django.db.models import F
from django.urls import reverse

from backtests.metrics import METRIC_NAMES
from backtests.models import OptimizationResult, OptimizationRun, RunStatus
from backtests.optimize import MINIMISED, rank
from backtests.selectors import CHART_POINTS, HEATMAP_BINS, RESULTS_PAGE
from marketdata.models import Exchange, Instrument
from marketdata.services import instrument_ensure
from tests.factories import UserFactory

START = datetime(2026, 1, 1, tzinfo=UTC)
FAST = list(range(2, 252))  # 250 values
SLOW = list(range(300, 700))  # 400 values: 100,000 combinations
BATCH = 10_000
#: The page's budget for a 100,000-combination run.
MAX_BYTES = 1_000_000


def store_optimization(owner, instrument, *, fast=FAST, slow=SLOW, objective="sharpe", seed=7):
    """A finished grid optimisation of ``sma_crossover`` with one stored row per (fast, slow)
    pair and random metrics (all of ``METRIC_NAMES``, as a sweep stores them): Sharpe rounded
    to 3 decimals (so that there are ties), about 1 % undefined (stored null, as the services
    store NaN). The best row per ``optimize.rank`` is the run's best."""
    rng = np.random.default_rng(seed)
    n = len(fast) * len(slow)
    sharpe = np.round(rng.normal(0.0, 1.0, n), 3)
    sharpe[rng.random(n) < 0.01] = np.nan
    total_return = rng.normal(0.0, 0.2, n)
    drawdown = np.round(rng.uniform(0.01, 0.6, n), 2)
    trades = rng.integers(0, 500, n)
    run = OptimizationRun.objects.create(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(days=30), method="grid",
        space={"fast": list(fast), "slow": list(slow)}, objective=objective,
        status=RunStatus.DONE, progress=1.0, combinations=n,
    )  # fmt: skip
    rows = []
    for i, (f, s) in enumerate((f, s) for f in fast for s in slow):
        value = None if np.isnan(sharpe[i]) else float(sharpe[i])
        metrics = dict.fromkeys(METRIC_NAMES, 1.0) | {
            "total_return": float(total_return[i]), "sharpe": value, "sortino": value,
            "max_drawdown": float(drawdown[i]), "n_trades": int(trades[i]),
        }  # fmt: skip
        rows.append(({"fast": f, "slow": s}, metrics, metrics[objective], i // 256))
    _insert(run, rows)
    best = run.results.order_by(best_first_order(objective), "id").first()
    run.best_parameters, run.best_metrics = best.parameters, best.metrics
    run.save(update_fields=["best_parameters", "best_metrics"])
    return run


def best_first_order(objective: str):
    value = F("objective")
    return value.asc(nulls_last=True) if objective in MINIMISED else value.desc(nulls_last=True)


def _insert(run: OptimizationRun, rows: list[tuple]) -> None:
    """Store ``rows`` (parameters, metrics, objective, chunk) in storage order: ``bulk_create``
    in batches, except on PostgreSQL, where Django's bulk insert escapes every JSON text of its
    arrays through a regular expression (50 s for these 100,000 rows): COPY there, as
    ``marketdata.services`` stores ticks."""
    if connection.vendor != "postgresql":
        for start in range(0, len(rows), BATCH):
            OptimizationResult.objects.bulk_create(
                OptimizationResult(run=run, parameters=p, metrics=m, objective=o, chunk=c)
                for p, m, o, c in rows[start : start + BATCH]
            )
        return
    table = OptimizationResult._meta.db_table
    columns = "run_id, parameters, metrics, objective, chunk, worker"
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for p, m, o, c in rows:
            copy.write_row((run.pk, json.dumps(p), json.dumps(m), o, c, ""))


def reference(run: OptimizationRun, metric: str) -> list[int]:
    """Result ids in ``optimize.rank`` order for ``metric``, the rows in storage order."""
    rows = run.results.order_by("id").values_list("id", f"metrics__{metric}")
    frame = pd.DataFrame(list(rows), columns=["id", metric], dtype=float)
    return [int(i) for i in rank(frame, metric)["id"]]


@dataclass
class Big:
    run: OptimizationRun
    owner: object
    ranked: list[int]  # ids, best Sharpe first


@pytest.fixture(scope="module")
def big(django_db_setup, django_db_blocker):
    """The 100,000-combination run, stored once and committed (the tests only read it)."""
    with django_db_blocker.unblock():
        # An exchange of its own: the module's other tests create "simulated" meanwhile.
        exchange = Exchange.objects.create(ccxt_id="bigsim", name="Big", kind="simulated")
        owner = UserFactory()
        try:
            instrument = instrument_ensure(exchange_id="bigsim", symbol="BTC/USDT")
            began = time.perf_counter()
            run = store_optimization(owner, instrument)
            took = time.perf_counter() - began
            print(f"\nstored {run.results.count():,} results in {took:.1f} s")
            yield Big(run=run, owner=owner, ranked=reference(run, "sharpe"))
        finally:  # committed rows: nothing may stay for the session's other tests
            OptimizationRun.objects.filter(owner=owner).delete()
            owner.delete()
            Instrument.objects.filter(exchange=exchange).delete()
            exchange.delete()


def page_url(run, **query) -> str:
    url = reverse("backtests:optimization-detail", args=[run.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def row_ids(html: str) -> list[int]:
    table = re.search(r'<table class="sortable" id="results-table">.*?</table>', html, re.S)
    assert table, "no results table"
    return [int(i) for i in re.findall(r'<tr data-result-id="(\d+)"', table.group(0))]


def get(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


# --- the 100,000-combination run ----------------------------------------------------------------


def test_the_page_of_a_100k_run_is_small_and_shows_the_best_first(db, client, big):
    client.force_login(big.owner)
    client.get(page_url(big.run))  # warm-up: templates compiled, connection open
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        response = client.get(page_url(big.run))
        timings.append(time.perf_counter() - began)
    size = len(response.content)
    each = ", ".join(f"{t:.3f}" for t in timings)
    print(f"\noptimisation page of 100,000 combinations: {size:,} bytes, {min(timings):.3f} s")
    print(f"(best of 3: {each})")
    assert response.status_code == 200
    assert size < MAX_BYTES
    html = response.content.decode()
    assert row_ids(html) == big.ranked[:RESULTS_PAGE]  # rank's order, ties in storage order
    assert 'aria-label="Pages of combinations"' in html
    assert "Page 1 of 2000" in html
    assert 'rel="next"' in html and 'rel="prev"' not in html


def test_the_next_pages_hold_the_next_rows_and_undefined_objectives_come_last(db, client, big):
    client.force_login(big.owner)
    page2 = get(client, page_url(big.run, page=2))
    assert row_ids(page2) == big.ranked[RESULTS_PAGE : 2 * RESULTS_PAGE]
    assert 'rel="prev"' in page2
    assert f'<td class="num">{RESULTS_PAGE + 1}</td>' in page2  # rank continues from page 1
    last = get(client, page_url(big.run, page=2000))
    assert row_ids(last) == big.ranked[-RESULTS_PAGE:]
    undefined = set(big.run.results.filter(objective__isnull=True).values_list("id", flat=True))
    assert 500 < len(undefined) < 1500
    assert set(row_ids(last)) <= undefined  # NaN last
    # A page number that is not one gives the first page, one too large the last.
    assert row_ids(get(client, page_url(big.run, page="abc"))) == big.ranked[:RESULTS_PAGE]
    assert row_ids(get(client, page_url(big.run, page=10**9))) == big.ranked[-RESULTS_PAGE:]


def test_sorting_by_another_column_ranks_every_combination(db, client, big):
    client.force_login(big.owner)
    by_return = get(client, page_url(big.run, sort="-total_return"))
    assert row_ids(by_return) == reference(big.run, "total_return")[:RESULTS_PAGE]
    assert 'aria-sort="descending"><a href="?sort=total_return#results"' in by_return
    # Max drawdown is minimised: its best-first sort is ascending, as rank orders it.
    by_drawdown = get(client, page_url(big.run, sort="max_drawdown", page=3))
    assert row_ids(by_drawdown) == reference(big.run, "max_drawdown")[2 * RESULTS_PAGE : 150]
    # The sort is kept in the pager's links.
    assert 'href="?sort=max_drawdown&amp;page=4#results" rel="next"' in by_drawdown
    # A parameter column: the largest slow first, ties in storage order.
    by_slow = row_ids(get(client, page_url(big.run, sort="-slow")))
    rows = big.run.results.in_bulk(by_slow)
    assert [rows[i].parameters["slow"] for i in by_slow] == [SLOW[-1]] * RESULTS_PAGE
    assert by_slow == sorted(by_slow)


@pytest.mark.parametrize("sort", ["", "password", "--sharpe", "sharpe;drop", "metrics__x", "id"])
def test_a_bad_sort_gets_the_default_order(db, client, big, sort):
    client.force_login(big.owner)
    assert row_ids(get(client, page_url(big.run, sort=sort))) == big.ranked[:RESULTS_PAGE]


def test_the_heatmap_is_binned_and_its_best_cell_holds_the_best_objective(db, client, big):
    client.force_login(big.owner)
    html = get(client, page_url(big.run))
    heatmap = re.search(r'<table class="heatmap binned" id="heatmap".*?</table>', html, re.S)
    assert heatmap, "no binned heatmap"
    heatmap = heatmap.group(0)
    cells = re.findall(
        r'<td class="cell (h\d|empty)" data-x="([^"]*)" data-y="([^"]*)" data-value="([^"]*)"',
        heatmap,
    )
    # 250 values in 50 ranges of 5, 400 in 58 ranges of 6 or 7: at most 60 x 60 cells.
    assert len(cells) == 50 * 58 <= HEATMAP_BINS * HEATMAP_BINS
    assert 'data-x-values="250"' in heatmap and 'data-y-values="400"' in heatmap
    best = big.run.results.get(pk=big.ranked[0])
    values = [float(v) for _, _, _, v in cells if v]
    assert max(values) == best.objective
    # The best cell is the bin holding the best combination, coloured best.
    f, s = best.parameters["fast"], best.parameters["slow"]
    (level, x, y, _), *_ = [c for c in cells if float(c[3] or "nan") == best.objective]

    def holds(label: str, v: int) -> bool:
        low, _, high = label.partition("\N{EN DASH}")
        return int(low) <= v <= int(high or low)

    assert holds(x, f) and holds(y, s), (x, y, f, s)
    assert level == "h9"
    # The columns: every fast value once, in order, in ranges of 5.
    columns = re.findall(r'<th scope="col">([^<]*)</th>', heatmap)[1:]
    ranges = [[int(v) for v in c.split("\N{EN DASH}")] for c in columns]
    assert [high - low + 1 for low, high in ranges] == [5] * 50
    assert ranges[0][0] == FAST[0] and ranges[-1][1] == FAST[-1]
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    rows = re.findall(r'<th scope="row">([^<]*)</th>', heatmap)
    sizes = [int(b) - int(a) + 1 for a, b in (r.split("\N{EN DASH}") for r in rows)]
    assert len(rows) == 58 and set(sizes) == {6, 7} and sum(sizes) == len(SLOW)


def test_another_users_run_is_not_found(db, client, big):
    client.force_login(UserFactory())
    for url in [page_url(big.run), page_url(big.run, sort="-total_return", page=2)]:
        assert client.get(url).status_code == 404
    assert client.get(f"/api/optimizations/{big.run.pk}/results/").status_code == 404


def test_the_api_pages_through_the_results_best_first(db, client, big):
    client.force_login(big.owner)
    url = f"/api/optimizations/{big.run.pk}/results/"
    first = client.get(url, {"page_size": 200}).json()
    assert [r["id"] for r in first["results"]] == big.ranked[:200]
    assert first["count"] == 100_000
    second = client.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == big.ranked[200:400]
    # Never the whole table: the page size has a ceiling.
    capped = client.get(url, {"page_size": 100_000}).json()
    assert len(capped["results"]) == 1000


# --- small runs ---------------------------------------------------------------------------------


@pytest.fixture
def instrument(db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    return instrument_ensure(exchange_id="simulated", symbol="ETH/USDT")


def test_a_small_grid_is_shown_whole_one_cell_per_pair(client, instrument):
    owner = UserFactory()
    grid = {"fast": [5, 10, 15], "slow": [20, 30]}
    run = store_optimization(owner, instrument, **grid, objective="max_drawdown")
    client.force_login(owner)
    html = get(client, page_url(run))
    heatmap = re.search(r'<table class="heatmap" id="heatmap".*?</table>', html, re.S).group(0)
    assert heatmap.count('<td class="cell') == 6 and "best of" not in heatmap
    ranked = reference(run, "max_drawdown")
    assert row_ids(html) == ranked  # minimised: lowest drawdown first
    best = run.results.get(pk=ranked[0])
    cell = (
        f'<td class="cell h9" data-x="{best.parameters["fast"]}" data-y="{best.parameters["slow"]}"'
    )
    assert cell in heatmap
    assert 'aria-label="Pages of combinations"' not in html  # one page: no pager


def test_walk_forward_windows_are_paged_and_the_equity_chart_bounded(client, instrument):
    """A walk-forward run of 250 windows and 100,000 bars of stitched equity: 100 windows a
    page, the chart's JSON downsampled."""
    owner = UserFactory()
    bars = 100_000
    windows = [
        {"window": i, "train_start": i * 400, "train_end": i * 400 + 2000,
         "test_start": i * 400 + 2000, "test_end": i * 400 + 2400,
         "parameters": {"fast": 5 + i % 7, "slow": 30}, "is_sharpe": 1.0, "oos_sharpe": 0.5}
        for i in range(250)
    ]  # fmt: skip
    equity = (10_000 + np.cumsum(np.random.default_rng(3).normal(0, 1, bars))).tolist()
    hours = [(START + timedelta(hours=h)).isoformat() for h in range(bars)]
    run = OptimizationRun.objects.create(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(hours=bars), method="walk_forward", objective="sharpe",
        train_bars=2000, test_bars=400, status=RunStatus.DONE, combinations=250,
        best_parameters={"fast": 5, "slow": 30}, best_metrics={"sharpe": 0.5},
        walk_forward={"windows": windows, "equity": equity, "equity_index": hours, "trades": 9},
    )  # fmt: skip
    client.force_login(owner)
    first = get(client, page_url(run))
    assert len(first) < MAX_BYTES
    table = re.search(r'<table id="walk-forward-table".*?</table>', first, re.S).group(0)
    assert re.findall(r'<tr data-window="(\d+)"', table) == [str(i) for i in range(100)]
    assert 'aria-label="Pages of windows"' in first and 'href="?page=2#walk-forward"' in first
    # The equity's and the drawdown's extremes, merged: at most twice CHART_POINTS (+ ends).
    chart = re.search(r'<script id="equity-data" type="application/json">(.*?)</script>', first)
    assert 1_000 < len(json.loads(chart.group(1))) <= 2 * (CHART_POINTS + 2)
    last = get(client, page_url(run, page=3))
    table = re.search(r'<table id="walk-forward-table".*?</table>', last, re.S).group(0)
    assert re.findall(r'<tr data-window="(\d+)"', table) == [str(i) for i in range(200, 250)]
