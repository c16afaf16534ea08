"""The backtest and optimisation pages, through Django's test client on the real database, and
their live-progress WebSocket routes through the real ASGI application.

Runs are executed synchronously here (``services.backtest_execute``, the optimisation's chunks
one by one): the worker path itself is covered by ``test_runs.py`` / ``test_optimization_runs.py``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from backtests import selectors, services
from backtests.models import BacktestRun, OptimizationRun, RunStatus
from backtests.optimize import grid_search
from marketdata.models import Exchange
from marketdata.selectors import candles_frame
from marketdata.services import instrument_ensure
from strategies.registry import available, get_strategy
from tests.backtests.support import store_hourly_candles
from tests.factories import StaffUserFactory, UserFactory
from tests.tradeapp.test_consumers import session_headers
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED

START = datetime(2026, 1, 1, tzinfo=UTC)
BARS = 600
HOUR = timedelta(hours=1)


@pytest.fixture
def instrument(db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=BARS, seed=3)
    return inst


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def other(db):
    return UserFactory()


def new_backtest(owner, instrument, **overrides) -> BacktestRun:
    fields = {
        "user": owner, "strategy": "sma_crossover", "parameters": {"fast": 5, "slow": 20},
        "instrument": instrument, "timeframe": "1h", "start": START, "end": START + BARS * HOUR,
        "enqueue": False,
    } | overrides  # fmt: skip
    return services.backtest_create(**fields)


def done_backtest(owner, instrument, **overrides) -> BacktestRun:
    run = new_backtest(owner, instrument, **overrides)
    services.backtest_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.DONE, run.error
    return run


def new_optimization(owner, instrument, **fields) -> OptimizationRun:
    run = OptimizationRun(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + BARS * HOUR, **fields,
    )  # fmt: skip
    return services.optimization_submit(run=run)


def execute_optimization(run: OptimizationRun) -> OptimizationRun:
    """What the workers do: the start task, then each chunk (the Celery group is not sent here:
    the test's transaction never commits)."""
    services.optimization_execute(run.pk)
    run.refresh_from_db()
    if run.method != OptimizationRun.Method.WALK_FORWARD:
        combos = list(get_strategy(run.strategy).parameter_grid(run.space))
        size = services.CHUNK_SIZE
        for index, start in enumerate(range(0, len(combos), size)):
            services.optimization_chunk(run.pk, index, combos[start : start + size])
        run.refresh_from_db()
    assert run.status == RunStatus.DONE, run.error
    return run


def form_data(**overrides) -> dict:
    return {
        "strategy": "sma_crossover", "sma_crossover__fast": "5", "sma_crossover__slow": "20",
        "timeframe": "1h", "start": "2026-01-01T00:00", "end": "2026-01-20T00:00",
        "cash": "10000", "fee": "0.001", "slippage": "0", "size": "1", "fill": "next_open",
        "stop_loss": "", "take_profit": "", "trailing_stop": "",
    } | overrides  # fmt: skip


def json_block(html: str, element_id: str):
    pattern = rf'<script id="{element_id}" type="application/json">(.*?)</script>'
    match = re.search(pattern, html, re.S)
    assert match, f"no #{element_id} block"
    return json.loads(match.group(1))


def field_block(html: str, name: str) -> str:
    """The markup of one form field's wrapper (label, input, help, errors)."""
    pattern = rf'<div class="field[^"]*" data-field="{re.escape(name)}">(.*?)</div>'
    match = re.search(pattern, html, re.S)
    assert match, f"no field {name}"
    return match.group(1)


# --- access -------------------------------------------------------------------------------------


def test_every_page_sends_anonymous_visitors_to_sign_in(client, owner, instrument):
    run = new_backtest(owner, instrument)
    opt = new_optimization(owner, instrument, space={"fast": [5], "slow": [20]})
    pages = [
        ("get", reverse("backtests:list")),
        ("get", reverse("backtests:create")),
        ("post", reverse("backtests:create")),
        ("get", reverse("backtests:detail", args=[run.pk])),
        ("post", reverse("backtests:cancel", args=[run.pk])),
        ("get", reverse("backtests:candle-range") + f"?instrument={instrument.pk}&timeframe=1h"),
        ("get", reverse("backtests:optimization-list")),
        ("get", reverse("backtests:optimization-create")),
        ("get", reverse("backtests:optimization-detail", args=[opt.pk])),
        ("post", reverse("backtests:optimization-cancel", args=[opt.pk])),
    ]
    for method, url in pages:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next="), url
    assert BacktestRun.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_another_users_runs_are_not_found(client, owner, other, instrument):
    run = new_backtest(owner, instrument)
    opt = new_optimization(owner, instrument, space={"fast": [5], "slow": [20]})
    client.force_login(other)
    for url in (
        reverse("backtests:detail", args=[run.pk]),
        reverse("backtests:create") + f"?from={run.pk}",
        reverse("backtests:optimization-detail", args=[opt.pk]),
        reverse("backtests:create") + f"?optimization={opt.pk}",
        reverse("backtests:optimization-create") + f"?from={opt.pk}",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("backtests:cancel", args=[run.pk])).status_code == 404
    assert client.post(reverse("backtests:optimization-cancel", args=[opt.pk])).status_code == 404
    assert BacktestRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert OptimizationRun.objects.get(pk=opt.pk).status == RunStatus.QUEUED
    listing = client.get(reverse("backtests:list")).content.decode()
    assert f'data-run-id="{run.pk}"' not in listing

    client.force_login(StaffUserFactory())  # staff see every run
    assert client.get(reverse("backtests:detail", args=[run.pk])).status_code == 200
    assert client.get(reverse("backtests:optimization-detail", args=[opt.pk])).status_code == 200


def test_lists_show_the_users_runs_and_staff_may_see_everyones(client, owner, other, instrument):
    mine = done_backtest(owner, instrument)
    theirs = new_backtest(other, instrument)
    client.force_login(owner)
    html = client.get(reverse("backtests:list")).content.decode()
    assert f'data-run-id="{mine.pk}"' in html and f'data-run-id="{theirs.pk}"' not in html
    assert f"{mine.metrics['total_return'] * 100:,.2f}%" in html  # the key metrics
    assert 'class="badge done"' in html

    staff = StaffUserFactory()
    new_backtest(staff, instrument)
    client.force_login(staff)
    own = client.get(reverse("backtests:list")).content.decode()
    assert f'data-run-id="{mine.pk}"' not in own  # staff: their own by default
    everyone = client.get(reverse("backtests:list") + "?all=1").content.decode()
    assert f'data-run-id="{mine.pk}"' in everyone and f'data-run-id="{theirs.pk}"' in everyone


# --- the backtest form --------------------------------------------------------------------------


def test_backtest_form_has_each_strategys_parameter_fields_and_the_stored_period(
    client, owner, instrument
):
    client.force_login(owner)
    response = client.get(reverse("backtests:create"))
    assert response.status_code == 200
    html = response.content.decode()
    for name in available():
        cls = get_strategy(name)
        assert f'data-strategy="{name}"' in html
        for spec in cls.parameter_specs:
            block = field_block(html, f"{name}__{spec.name}")
            assert f'name="{name}__{spec.name}"' in block
            assert f'<label for="id_{name}__{spec.name}">{spec.name}</label>' in block
            if spec.type is not bool:
                assert f'value="{spec.default}"' in block
    # Only the chosen strategy's fieldset is enabled.
    assert re.search(r'data-strategy="sma_crossover">', html)
    assert re.search(r'data-strategy="ema_crossover" hidden disabled>', html)
    # The period defaults to the stored candles.
    first, last = START + HOUR, START + BARS * HOUR
    assert f'value="{first:%Y-%m-%dT%H:%M}"' in field_block(html, "start")
    assert f'value="{last:%Y-%m-%dT%H:%M}"' in field_block(html, "end")
    url = reverse("backtests:candle-range") + f"?instrument={instrument.pk}&timeframe="
    assert client.get(url + "1h").json() == {"first": first.isoformat(), "last": last.isoformat()}
    assert client.get(url + "4h").json() == {"first": None, "last": None}
    assert client.get(url + "2h").status_code == 400


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"sma_crossover__fast": "30", "sma_crossover__slow": "10"},
            "sma_crossover__fast",
            "fast (30) must be less than slow (10)",
        ),
        ({"sma_crossover__fast": "0"}, "sma_crossover__fast", "must be &gt;= 1"),
        ({"sma_crossover__fast": "2.5"}, "sma_crossover__fast", "whole number"),
        ({"fee": "-0.1"}, "fee", "fee must be &gt;= 0"),
        ({"size": "2"}, "size", "no leverage"),
        ({"end": "2025-12-01T00:00"}, "end", "after the start"),
    ],
)
def test_backtest_form_shows_errors_next_to_the_field_and_stores_nothing(
    client, owner, instrument, changes, field, message
):
    client.force_login(owner)
    data = form_data(instrument=str(instrument.pk), **changes)
    response = client.post(reverse("backtests:create"), data)
    assert response.status_code == 200
    html = response.content.decode()
    block = field_block(html, field)
    assert 'class="errorlist"' in block and message in block, block
    assert 'aria-invalid="true"' in block
    assert 'id="form-errors"' in html
    assert not BacktestRun.objects.exists()
    # The user's input is kept.
    for name, value in changes.items():
        assert f'value="{value}"' in field_block(html, name)


def test_valid_backtest_post_queues_the_run_and_opens_its_page(client, owner, instrument):
    client.force_login(owner)
    # Another strategy's field (a fieldset the page disabled) is ignored.
    data = form_data(instrument=str(instrument.pk), stop_loss="0.05", allow_short="on",
                     ema_crossover__fast="99")  # fmt: skip
    response = client.post(reverse("backtests:create"), data)
    run = BacktestRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/backtests/{run.pk}/"
    assert run.owner == owner and run.status == RunStatus.QUEUED
    assert run.parameters == {"fast": 5, "slow": 20}
    assert run.start == START and run.end == datetime(2026, 1, 20, tzinfo=UTC)
    assert run.stop_loss == 0.05 and run.allow_short is True and run.take_profit is None

    page = client.get(response["Location"]).content.decode()
    assert 'id="run-status" class="badge queued" data-status="queued"' in page
    assert f'data-ws="/ws/backtest/{run.pk}"' in page
    assert '<progress id="run-progress"' in page and 'id="cancel-form"' in page
    assert "equity-data" not in page  # no result yet
    assert f"Backtest #{run.pk} queued." in page


def test_fee_in_base_is_a_form_setting_shown_and_refused_with_shorts(client, owner, instrument):
    client.force_login(owner)
    blank = client.get(reverse("backtests:create")).content.decode()
    block = field_block(blank, "fee_in_base")
    assert 'type="checkbox" name="fee_in_base"' in block and "checked" not in block
    assert "Fee in the coin bought" in block

    both = form_data(instrument=str(instrument.pk), fee_in_base="on", allow_short="on")
    refused = client.post(reverse("backtests:create"), both).content.decode()
    block = field_block(refused, "fee_in_base")
    assert 'class="errorlist"' in block and "cannot be combined with allow_short" in block, block
    assert not BacktestRun.objects.exists()

    response = client.post(
        reverse("backtests:create"), form_data(instrument=str(instrument.pk), fee_in_base="on")
    )
    run = BacktestRun.objects.get()
    assert response.status_code == 302 and run.fee_in_base is True and run.allow_short is False
    page = client.get(response["Location"]).content.decode()
    assert "buy fee taken from the coin bought" in page
    again = client.get(reverse("backtests:create") + f"?from={run.pk}").content.decode()
    assert "checked" in field_block(again, "fee_in_base")

    client.post(reverse("backtests:create"), form_data(instrument=str(instrument.pk)))
    plain = BacktestRun.objects.exclude(pk=run.pk).get()
    assert plain.fee_in_base is False
    assert "coin bought" not in client.get(f"/backtests/{plain.pk}/").content.decode()

    search = opt_form_data(instrument, fee_in_base="on")
    client.post(reverse("backtests:optimization-create"), search)
    opt = OptimizationRun.objects.get()
    assert opt.fee_in_base is True
    # The sweep's chunks simulate with it: what an in-process grid search with it finds.
    opt = execute_optimization(opt)
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h", start=opt.start, end=opt.end)
    local = grid_search(frame, "sma_crossover", opt.space, fee=0.001, fee_in_base=True)
    best = local.results.iloc[0]
    assert opt.best_parameters == local.best
    assert opt.best_metrics["final_equity"] == best["final_equity"]
    plain = grid_search(frame, "sma_crossover", opt.space, fee=0.001).results
    assert plain["final_equity"].max() != local.results["final_equity"].max()


def test_cancel_a_queued_backtest(client, owner, instrument):
    run = new_backtest(owner, instrument)
    client.force_login(owner)
    response = client.post(reverse("backtests:cancel", args=[run.pk]), follow=True)
    assert BacktestRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    html = response.content.decode()
    assert "cancelled" in html and 'id="cancel-form"' not in html and "data-ws" not in html
    again = client.post(reverse("backtests:cancel", args=[run.pk]), follow=True)
    assert "is cancelled already" in again.content.decode()


# --- a finished backtest ------------------------------------------------------------------------


def test_backtest_page_shows_equity_drawdown_metrics_and_trades(client, owner, instrument):
    run = done_backtest(owner, instrument)
    client.force_login(owner)
    html = client.get(reverse("backtests:detail", args=[run.pk])).content.decode()
    assert 'id="run-status" class="badge done" data-status="done"' in html
    assert "data-ws" not in html  # finished: no live stream

    equity = json_block(html, "equity-data")
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h", start=run.start, end=run.end)
    assert len(equity) == run.data_bars == len(frame)  # small run: every bar
    assert [p["timestamp"] for p in equity] == [int(t.timestamp() * 1000) for t in frame.index]
    stored = services.unpack_equity(run.equity_blob).to_numpy()
    np.testing.assert_allclose([p["value"] for p in equity], stored)
    drawdown = json_block(html, "drawdown-data")
    assert len(drawdown) == len(equity) and max(p["value"] for p in drawdown) <= 0
    assert min(p["value"] for p in drawdown) == pytest.approx(-run.metrics["max_drawdown"] * 100)
    assert 'id="equity-chart"' in html and 'id="drawdown-chart"' in html

    metrics = re.search(r'<dl class="stats" id="metrics">(.*?)</dl>', html, re.S).group(1)
    for key in ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor",
                "n_trades", "total_fees"):  # fmt: skip
        assert f'data-metric="{key}"' in metrics
    assert f"{run.metrics['total_return'] * 100:,.2f}%" in metrics

    trades = services.unpack_trades(run.trades_blob)
    assert 0 < len(trades) == run.trades_count < 100
    table = re.search(r'<table id="trades-table".*?</table>', html, re.S).group(0)
    assert table.count("<tr data-trade=") == len(trades)
    assert table.count("<time ") >= len(trades)  # entry/exit times through {% ts %}
    assert f"{trades['pnl'].iloc[0]:+,.2f}" in table
    assert 'data-parameter="fast">5<' in html and run.data_hash in html


def test_trades_table_pages_through_long_results(client, owner, instrument, monkeypatch):
    from backtests import views

    monkeypatch.setattr(views, "TRADES_PAGE", 3)
    run = done_backtest(owner, instrument, parameters={"fast": 2, "slow": 5})
    assert run.trades_count > 6
    client.force_login(owner)
    html = client.get(reverse("backtests:detail", args=[run.pk]) + "?trades=2").content.decode()
    assert html.count("<tr data-trade=") == 3 and '<tr data-trade="4">' in html
    assert f"Trades 4\N{EN DASH}6 of {run.trades_count}" in html
    assert f"/api/backtests/{run.pk}/result/" in html


def test_failed_backtest_shows_the_error(client, owner, instrument):
    before = START - 400 * 24 * HOUR
    run = new_backtest(owner, instrument, start=before, end=before + 100 * 24 * HOUR)
    services.backtest_execute(run.pk)
    client.force_login(owner)
    html = client.get(reverse("backtests:detail", args=[run.pk])).content.decode()
    assert 'data-status="failed"' in html and 'id="run-error"' in html and "no 1h candles" in html


def test_rerun_prefills_the_form_with_the_runs_settings(client, owner, instrument):
    run = done_backtest(owner, instrument, parameters={"fast": 7, "slow": 25}, fee=0.002)
    client.force_login(owner)
    detail = client.get(reverse("backtests:detail", args=[run.pk])).content.decode()
    assert f'href="/backtests/new/?from={run.pk}"' in detail
    html = client.get(reverse("backtests:create") + f"?from={run.pk}").content.decode()
    assert 'value="7"' in field_block(html, "sma_crossover__fast")
    assert 'value="25"' in field_block(html, "sma_crossover__slow")
    assert 'value="0.002"' in field_block(html, "fee")
    assert 'value="2026-01-01T00:00"' in field_block(html, "start")
    assert 'data-period-fixed="1"' in html


def test_equity_downsampling_keeps_the_ends_and_the_extremes():
    rng = np.random.default_rng(1)
    equity = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.001, 200_000)))
    times = 1_700_000_000_000 + 60_000 * np.arange(len(equity), dtype=np.int64)
    charts = selectors.equity_charts(times, equity)
    points = charts["equity"]
    assert len(points) <= 2 * selectors.CHART_POINTS + 2
    assert points[0]["timestamp"] == times[0] and points[-1]["timestamp"] == times[-1]
    values = [p["value"] for p in points]
    assert max(values) == equity.max() and min(values) == equity.min()
    peak = np.maximum.accumulate(equity)
    deepest = ((equity / peak - 1) * 100).min()
    assert min(p["value"] for p in charts["drawdown"]) == pytest.approx(deepest)
    stamps = [p["timestamp"] for p in points]
    assert stamps == sorted(stamps)


# --- optimisations ------------------------------------------------------------------------------


def opt_form_data(instrument, **overrides) -> dict:
    return {
        "method": "grid", "objective": "sharpe", "n_iter": "50", "seed": "0",
        "strategy": "sma_crossover",
        "sma_crossover__fast__from": "5", "sma_crossover__fast__to": "15",
        "sma_crossover__fast__step": "5", "sma_crossover__fast__values": "",
        "sma_crossover__slow__from": "20", "sma_crossover__slow__to": "40",
        "sma_crossover__slow__step": "10", "sma_crossover__slow__values": "",
        "instrument": str(instrument.pk), "timeframe": "1h",
        "start": "2026-01-01T00:00", "end": "2026-01-25T00:00", "cash": "10000", "fee": "0.001",
        "slippage": "0", "size": "1", "fill": "next_open",
    } | overrides  # fmt: skip


def test_optimization_form_renders_a_grid_per_parameter(client, owner, instrument):
    client.force_login(owner)
    html = client.get(reverse("backtests:optimization-create")).content.decode()
    for name in available():
        for spec in get_strategy(name).parameter_specs:
            field_block(html, f"{name}__{spec.name}__values")
            if spec.type in (int, float):
                for part in ("from", "to", "step"):
                    field_block(html, f"{name}__{spec.name}__{part}")
    assert 'data-method="walk_forward"' in html and 'name="objective"' in html
    # The default range: five multiples of the schema's step around the default, in bounds.
    assert 'value="5"' in field_block(html, "sma_crossover__fast__from")  # 10 - 2*5, min 1
    assert 'value="20"' in field_block(html, "sma_crossover__fast__to")


def test_valid_optimization_post_queues_the_grid(client, owner, instrument):
    client.force_login(owner)
    response = client.post(reverse("backtests:optimization-create"), opt_form_data(instrument))
    run = OptimizationRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("backtests:optimization-detail", args=[run.pk])
    assert run.space == {"fast": [5, 10, 15], "slow": [20, 30, 40]} and run.combinations == 9
    assert run.status == RunStatus.QUEUED and run.owner == owner and run.method == "grid"
    page = client.get(response["Location"]).content.decode()
    assert f'data-ws="/ws/optimization/{run.pk}"' in page and 'data-status="queued"' in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"sma_crossover__fast__values": "5, 0"}, "sma_crossover__fast__values", "must be &gt;= 1"),
        ({"sma_crossover__fast__values": "5, x"}, "sma_crossover__fast__values", "not a number"),
        ({"sma_crossover__slow__step": ""}, "sma_crossover__slow__from", "Give from, to and step"),
        ({"method": "walk_forward"}, "train_bars", "walk-forward needs a number of bars"),
        ({"method": "random", "n_iter": ""}, "n_iter", "between 1 and"),
        (
            {"sma_crossover__fast__values": "50", "sma_crossover__slow__values": "20"},
            None,
            "no valid combination",
        ),
        (
            {
                "sma_crossover__fast__to": "500",
                "sma_crossover__fast__step": "1",
                "sma_crossover__slow__to": "1000",
                "sma_crossover__slow__step": "1",
            },
            None,
            "combinations; at most",
        ),
    ],
)
def test_optimization_form_refusals_store_nothing(
    client, owner, instrument, changes, field, message
):
    client.force_login(owner)
    response = client.post(
        reverse("backtests:optimization-create"), opt_form_data(instrument, **changes)
    )
    assert response.status_code == 200
    html = response.content.decode()
    where = field_block(html, field) if field else html[html.index('id="form-errors"') :][:500]
    assert message in where, where
    assert not OptimizationRun.objects.exists()


def test_grid_optimization_page_has_the_heatmap_and_the_sortable_table(client, owner, instrument):
    # fast=25 with slow=20 breaks the strategy's rule: one empty cell of six.
    run = execute_optimization(
        new_optimization(owner, instrument, space={"fast": [5, 10, 25], "slow": [20, 30]})
    )
    assert run.results.count() == 5
    client.force_login(owner)
    html = client.get(reverse("backtests:optimization-detail", args=[run.pk])).content.decode()
    heatmap = re.search(r'<table class="heatmap" id="heatmap".*?</table>', html, re.S).group(0)
    assert 'data-x="fast"' in heatmap and 'data-y="slow"' in heatmap
    assert heatmap.count('<td class="cell') == 6
    assert heatmap.count('<td class="cell empty"') == 1
    best = run.results.order_by("-objective").first()
    fast, slow = best.parameters["fast"], best.parameters["slow"]
    assert f'<td class="cell h9" data-x="{fast}" data-y="{slow}"' in heatmap
    pattern = r'<table class="sortable" id="results-table">.*?</table>'
    table = re.search(pattern, html, re.S).group(0)
    assert table.count("<tr data-result-id=") == 5
    assert table.count('data-sort="number"') >= 8
    first_row = re.search(r'<tr data-result-id="(\d+)"', table).group(1)
    assert int(first_row) == best.pk  # best first

    assert f'href="/backtests/new/?optimization={run.pk}"' in html
    form = client.get(reverse("backtests:create") + f"?optimization={run.pk}").content.decode()
    assert f'value="{run.best_parameters["fast"]}"' in field_block(form, "sma_crossover__fast")
    assert f'value="{run.best_parameters["slow"]}"' in field_block(form, "sma_crossover__slow")


def test_walk_forward_page_shows_the_windows(client, owner, instrument):
    run = execute_optimization(
        new_optimization(owner, instrument, method="walk_forward",
                         space={"fast": [5, 10], "slow": [20, 40]}, train_bars=200, test_bars=100)
    )  # fmt: skip
    windows = run.walk_forward["windows"]
    assert len(windows) == (BARS - 200) // 100
    client.force_login(owner)
    html = client.get(reverse("backtests:optimization-detail", args=[run.pk])).content.decode()
    table = re.search(r'<table id="walk-forward-table".*?</table>', html, re.S).group(0)
    assert table.count("<tr data-window=") == len(windows)
    assert table.count("<time ") == 4 * len(windows)  # in-sample and out-of-sample periods
    first = windows[0]
    assert f"fast={first['parameters']['fast']}, slow={first['parameters']['slow']}" in table
    # The first in-sample period starts with the run's first candle.
    assert f'datetime="{(START + HOUR):%Y-%m-%dT%H:%M:%S}.000Z"' in table
    equity = json_block(html, "equity-data")
    assert len(equity) == len(run.walk_forward["equity"]) == 100 * len(windows)
    assert 'id="heatmap"' not in html


def test_optimization_list_shows_the_users_runs(client, owner, other, instrument):
    run = new_optimization(owner, instrument, space={"fast": [5], "slow": [20]})
    client.force_login(owner)
    url = reverse("backtests:optimization-list")
    assert f'data-run-id="{run.pk}"' in client.get(url).content.decode()
    client.force_login(other)
    assert f'data-run-id="{run.pk}"' not in client.get(url).content.decode()


# --- live progress ------------------------------------------------------------------------------


async def connect(route: str, user=None):
    headers = await database_sync_to_async(session_headers)(user)
    communicator = WebsocketCommunicator(application, route, headers=headers)
    connected, code = await communicator.connect(timeout=10)
    return communicator, connected, code


@pytest.fixture
def live_world(transactional_db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="ETH/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=BARS, seed=4)
    owner, other = UserFactory(), UserFactory()
    # Stored directly (not submitted): nothing is queued for a worker this test does not run.
    opt = OptimizationRun.objects.create(
        owner=owner, strategy="sma_crossover", instrument=inst, timeframe="1h", start=START,
        end=START + BARS * HOUR, space={"fast": [5], "slow": [20]},
    )  # fmt: skip
    return {"owner": owner, "other": other, "run": new_backtest(owner, inst), "opt": opt}


@pytest.mark.asyncio
async def test_backtest_route_sends_the_snapshot_then_each_progress_event(live_world):
    run = live_world["run"]
    ws, connected, _ = await connect(f"/ws/backtest/{run.pk}", live_world["owner"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert snapshot["run"]["id"] == run.pk and snapshot["run"]["status"] == "queued"
    assert snapshot["run"]["progress"] == 0
    seq = snapshot["streams"][f"backtests:{run.pk}"]

    await database_sync_to_async(services.backtest_execute)(run.pk)
    running = await ws.receive_json_from(timeout=5)
    assert running["type"] == "run.progress" and running["run_id"] == run.pk
    assert running["status"] == "running" and running["seq"] == seq + 1
    done = await ws.receive_json_from(timeout=5)
    assert done["status"] == "done" and done["progress"] == 1.0 and done["seq"] == seq + 2
    await ws.disconnect()


@pytest.mark.asyncio
async def test_progress_routes_are_the_owners_alone(live_world):
    run = live_world["run"]
    _, connected, code = await connect(f"/ws/backtest/{run.pk}", live_world["other"])
    assert not connected and code == CLOSE_NOT_FOUND
    _, connected, code = await connect(f"/ws/backtest/{run.pk + 1000}", live_world["owner"])
    assert not connected and code == CLOSE_NOT_FOUND
    _, connected, code = await connect(f"/ws/backtest/{run.pk}")
    assert not connected and code == CLOSE_UNAUTHENTICATED
    staff = await database_sync_to_async(StaffUserFactory)()
    ws, connected, _ = await connect(f"/ws/backtest/{run.pk}", staff)
    assert connected
    await ws.disconnect()

    opt = live_world["opt"]
    _, connected, code = await connect(f"/ws/optimization/{opt.pk}", live_world["other"])
    assert not connected and code == CLOSE_NOT_FOUND
    ws, connected, _ = await connect(f"/ws/optimization/{opt.pk}", live_world["owner"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["run"]["kind"] == "optimization" and snapshot["run"]["status"] == "queued"
    assert f"optimizations:{opt.pk}" in snapshot["streams"]
    await ws.disconnect()
