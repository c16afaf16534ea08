"""The admin: every model of our apps registered with list columns and search (a new model
cannot slip through); each changelist, change page and search renders with a row present;
every registered page needs sign-in; the beat schedules are editable; re-running and cancelling
runs go through the services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from backtests.models import (
    BacktestRun,
    OptimizationChunk,
    OptimizationResult,
    OptimizationRun,
    RunStatus,
)
from bots.models import (
    BotEvent,
    ExchangeAccount,
    Fill,
    Order,
    Position,
    RiskBudget,
    Signal,
    Trade,
)
from marketdata.models import Candle, CollectionStatus, Exchange, RawTick, RejectedTick
from strategies.models import StrategyPreset
from tests.bots.support import instrument_with_exchange, make_bot
from tests.factories import StaffUserFactory, UserFactory

OUR_APPS = ("marketdata", "strategies", "bots", "backtests")
OUR_MODELS = sorted(
    (model._meta.app_label, model._meta.model_name)
    for app in OUR_APPS
    for model in apps.get_app_config(app).get_models()
)
REGISTERED = sorted(
    (model._meta.app_label, model._meta.model_name) for model in admin.site._registry
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Nobody signs in with a password here: a fast hasher keeps the set-up cheap.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_client(client, db):
    client.force_login(StaffUserFactory(is_superuser=True))
    return client


@pytest.fixture
def one_of_each(db) -> dict[str, object]:
    """A row of every model of our apps (made directly: the pages only need them stored)."""
    owner = UserFactory(username="alice")
    instrument = instrument_with_exchange("ETH/USDT")
    bot = make_bot(owner, instrument, name="alpha")
    account = ExchangeAccount(owner=owner, exchange=instrument.exchange, label="main")
    account.set_credentials(api_key="k", api_secret="s")
    account.save()
    signal = Signal.objects.create(
        bot=bot, time=T0, action="BUY", price=Decimal("100"), reason="fast above slow"
    )
    order = Order.objects.create(
        bot=bot, signal=signal, client_order_id="tb1-1-b", side="buy", time=T0,
        quantity=Decimal("1"), price=Decimal("100"), status=Order.Status.FILLED,
    )  # fmt: skip
    fill = Fill.objects.create(
        order=order, bot=bot, time=T0, side="buy", quantity=1, price=100, fee=Decimal("0.1"),
        exchange_trade_id="X-1",
    )  # fmt: skip
    trade = Trade.objects.create(
        bot=bot, entry_time=T0, exit_time=T0 + timedelta(hours=1), quantity=1, entry_price=100,
        exit_price=101, fees=0, pnl=1, return_fraction=0.01, exit_reason="signal",
    )  # fmt: skip
    tick = RawTick.objects.create(
        instrument=instrument, trade_id="T-4711", time=T0, price=Decimal("100"),
        amount=Decimal("0.5"), side="buy", received_at=T0,
    )  # fmt: skip
    reject = RejectedTick.objects.create(
        exchange="simulated", symbol="DOGE/EUR", payload={"price": -1},
        reason="unknown symbol 'DOGE/EUR'", received_at=T0,
    )  # fmt: skip
    candle = Candle.objects.create(
        instrument=instrument, timeframe="1m", close_time=T0, open=1, high=2, low=1, close=2,
        volume=3,
    )  # fmt: skip
    backtest = BacktestRun.objects.create(
        owner=owner, strategy="sma_crossover", parameters={"fast": 5, "slow": 20},
        instrument=instrument, timeframe="1h", start=T0, end=T0 + timedelta(days=5),
    )  # fmt: skip
    run = OptimizationRun.objects.create(
        owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=T0, end=T0 + timedelta(days=5), space={"fast": [5], "slow": [20]},
    )  # fmt: skip
    result = OptimizationResult.objects.create(
        run=run, parameters={"fast": 5, "slow": 20}, metrics={"sharpe": 1.5}, objective=1.5,
        worker="w1@host",
    )  # fmt: skip
    rows = {
        "exchange": instrument.exchange,
        "instrument": instrument,
        "rawtick": tick,
        "rejectedtick": reject,
        "candle": candle,
        "collectionstatus": CollectionStatus.objects.create(
            instrument=instrument, state="error", last_error="timeout"
        ),
        "strategypreset": StrategyPreset.objects.create(
            name="slow preset", strategy="sma_crossover", parameters={"fast": 5, "slow": 20}
        ),
        "exchangeaccount": account,
        "bot": bot,
        "signal": signal,
        "order": order,
        "fill": fill,
        "trade": trade,
        "position": Position.objects.get(bot=bot),
        "botevent": BotEvent.objects.get(bot=bot),
        "riskbudget": RiskBudget.objects.create(owner=owner, max_exposure=1000),
        "backtestrun": backtest,
        "optimizationrun": run,
        "optimizationresult": result,
        "optimizationchunk": OptimizationChunk.objects.create(
            run=run, index=0, combinations=[{"fast": 5, "slow": 20}], worker="w1@host"
        ),
    }
    assert sorted(rows) == sorted(model for app, model in OUR_MODELS)  # one row of each
    return rows


def search_term(obj: object, model_admin: admin.ModelAdmin) -> str:
    """The value of the admin's first search field on ``obj``: a search that must find it."""
    path = model_admin.search_fields[0].lstrip("=^@")
    value = obj
    for part in path.split("__"):
        value = getattr(value, part)
    return str(value)


def test_every_model_of_our_apps_is_registered_with_columns_and_search():
    assert OUR_MODELS, "no models found"
    for app, name in OUR_MODELS:
        model = apps.get_model(app, name)
        assert model in admin.site._registry, f"{app}.{name} is not in the admin"
        model_admin = admin.site._registry[model]
        columns = [c for c in model_admin.list_display if c != "__str__"]
        assert len(columns) >= 3, f"{app}.{name}: list_display {model_admin.list_display}"
        assert model_admin.search_fields, f"{app}.{name} has no search_fields"
    # The apps that register themselves: users, tokens, beat's schedules, task results.
    for label in (
        "auth.user",
        "authtoken.tokenproxy",
        "django_celery_beat.periodictask",
        "django_celery_beat.intervalschedule",
        "django_celery_beat.crontabschedule",
    ):
        assert apps.get_model(label) in admin.site._registry, label  # fmt: skip


@pytest.mark.parametrize(("app", "model"), OUR_MODELS)
def test_changelist_change_page_and_search_render_with_a_row(admin_client, one_of_each, app, model):
    obj = one_of_each[model]
    model_admin = admin.site._registry[type(obj)]
    changelist = reverse(f"admin:{app}_{model}_changelist")
    change = reverse(f"admin:{app}_{model}_change", args=[obj.pk])
    listing = admin_client.get(changelist)
    assert listing.status_code == 200
    assert change in listing.content.decode()
    assert admin_client.get(change).status_code == 200
    found = admin_client.get(changelist, {"q": search_term(obj, model_admin)})
    assert found.status_code == 200 and change in found.content.decode(), model
    missing = admin_client.get(changelist, {"q": "no-such-thing-0815"})
    assert missing.status_code == 200 and change not in missing.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(("app", "model"), REGISTERED)
def test_admin_changelist_and_add_pages_render(client, app, model):
    client.force_login(StaffUserFactory(is_superuser=True))
    changelist = client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert changelist.status_code == 200
    add = client.get(reverse(f"admin:{app}_{model}_add"))
    assert add.status_code in (200, 403)  # 403: audit data is never added by hand


@pytest.mark.django_db
@pytest.mark.parametrize(("app", "model"), REGISTERED)
def test_admin_pages_require_sign_in(client, app, model):
    response = client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_audit_rows_are_read_only(admin_client, one_of_each):
    for model in ("rawtick", "rejectedtick", "signal", "order", "botevent", "optimizationresult"):
        obj = one_of_each[model]
        app = obj._meta.app_label
        assert admin_client.get(reverse(f"admin:{app}_{model}_add")).status_code == 403
        page = admin_client.get(reverse(f"admin:{app}_{model}_change", args=[obj.pk]))
        assert b'name="_save"' not in page.content, model  # a view, not a form


def test_beat_schedules_are_editable_in_the_admin(admin_client):
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    every_hour = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    task = PeriodicTask.objects.create(
        name="refill gaps", task="marketdata.refill_gaps", interval=every_minute
    )
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and b'name="interval"' in page.content
    response = admin_client.post(url, {
        "name": "refill gaps", "regtask": "", "task": "marketdata.refill_gaps",
        "interval": every_hour.pk, "args": "[]", "kwargs": "{}", "headers": "{}",
        "enabled": "on", "description": "", "expire_seconds": "", "priority": "",
        "queue": "", "exchange": "", "routing_key": "", "start_time_0": "", "start_time_1": "",
    })  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    task.refresh_from_db()
    assert task.interval == every_hour


def test_rerun_queues_new_runs_with_the_same_settings(
    admin_client, one_of_each, django_capture_on_commit_callbacks
):
    backtest = one_of_each["backtestrun"]
    BacktestRun.objects.filter(pk=backtest.pk).update(
        status=RunStatus.DONE, metrics={"sharpe": 1.0}, fee=0.002
    )
    broken = BacktestRun.objects.create(
        owner=backtest.owner, strategy="gone_strategy", instrument=backtest.instrument,
        timeframe="1h", start=T0, end=T0 + timedelta(days=1), status=RunStatus.FAILED,
    )  # fmt: skip
    url = reverse("admin:backtests_backtestrun_changelist")
    response = admin_client.post(
        url, {"action": "rerun_runs", "_selected_action": [backtest.pk, broken.pk]}, follow=True
    )
    assert response.status_code == 200
    new = BacktestRun.objects.exclude(pk__in=[backtest.pk, broken.pk]).get()
    assert new.status == RunStatus.QUEUED and new.owner == backtest.owner
    assert (new.strategy, new.parameters, new.fee) == (
        "sma_crossover",
        {"fast": 5, "slow": 20},
        0.002,
    )
    assert (new.start, new.end, new.instrument_id) == (
        backtest.start,
        backtest.end,
        backtest.instrument_id,
    )
    text = [str(m) for m in response.context["messages"]]
    assert any("1 run(s) queued again" in m for m in text), text
    assert any(f"#{broken.pk}" in m and "gone_strategy" in m for m in text), text

    optimisation = one_of_each["optimizationrun"]
    admin_client.post(
        reverse("admin:backtests_optimizationrun_changelist"),
        {"action": "rerun_runs", "_selected_action": [optimisation.pk]},
    )
    again = OptimizationRun.objects.exclude(pk=optimisation.pk).get()
    assert again.status == RunStatus.QUEUED and again.space == optimisation.space
    assert again.combinations == 1


def test_cancel_stops_queued_runs_and_counts_finished_ones(admin_client, one_of_each):
    queued = one_of_each["backtestrun"]
    done = BacktestRun.objects.create(
        owner=queued.owner, strategy="sma_crossover", instrument=queued.instrument,
        timeframe="1h", start=T0, end=T0 + timedelta(days=1), status=RunStatus.DONE,
    )  # fmt: skip
    response = admin_client.post(
        reverse("admin:backtests_backtestrun_changelist"),
        {"action": "cancel_runs", "_selected_action": [queued.pk, done.pk]}, follow=True,
    )  # fmt: skip
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.status, done.status) == (RunStatus.CANCELLED, RunStatus.DONE)
    text = [str(m) for m in response.context["messages"]]
    assert "1 run(s) cancelled, 1 had finished already." in text


def test_optimisation_page_shows_the_best_results_and_links_to_all(admin_client, one_of_each):
    run = one_of_each["optimizationrun"]
    OptimizationResult.objects.create(
        run=run, parameters={"fast": 7, "slow": 20}, metrics={"sharpe": 2.5}, objective=2.5
    )
    page = admin_client.get(reverse("admin:backtests_optimizationrun_change", args=[run.pk]))
    html = page.content.decode()
    assert html.index("&quot;fast&quot;: 7") < html.index("&quot;fast&quot;: 5")  # best first
    results = reverse("admin:backtests_optimizationresult_changelist") + f"?run__id__exact={run.pk}"
    assert results in html and "all 2 results" in html
    assert admin_client.get(results).status_code == 200


def test_a_bad_optimisation_in_the_add_form_is_a_field_error(admin_client, one_of_each):
    instrument = one_of_each["instrument"]
    response = admin_client.post(reverse("admin:backtests_optimizationrun_add"), {
        "strategy": "sma_crossover", "instrument": instrument.pk, "timeframe": "1h",
        "start_0": "2026-01-01", "start_1": "00:00:00", "end_0": "2026-01-05",
        "end_1": "00:00:00", "cash": "10000", "fee": "0.001", "slippage": "0", "size": "1",
        "fill": "next_open", "method": "grid", "space": '{"fast": [50], "slow": [10]}',
        "objective": "sharpe", "n_iter": "50", "seed": "0",
    })  # fmt: skip
    assert response.status_code == 200
    assert "no valid combination" in response.content.decode()
    assert OptimizationRun.objects.count() == 1  # the fixture's only


def test_exchange_admin_keeps_its_timestamps_read_only(admin_client, one_of_each):
    exchange = one_of_each["exchange"]
    page = admin_client.get(reverse("admin:marketdata_exchange_change", args=[exchange.pk]))
    assert page.status_code == 200 and b'name="created_at"' not in page.content
    assert Exchange.objects.filter(pk=exchange.pk).exists()


def test_a_big_table_is_counted_from_statistics_only_when_unfiltered(admin_client, one_of_each):
    url = reverse("admin:marketdata_rawtick_changelist")
    if connection.vendor == "postgresql":
        # What ANALYZE reports for a table of five million ticks (rolled back with the test).
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE pg_class SET reltuples = 5000000 WHERE oid = 'marketdata_rawtick'::regclass"
            )
        assert "5000000 raw ticks" in admin_client.get(url).content.decode()
    else:  # SQLite keeps no row estimate: counted
        assert "1 raw tick" in admin_client.get(url).content.decode()
    filtered = admin_client.get(url, {"side": "buy"}).content.decode()
    assert "1 raw tick" in filtered and one_of_each["rawtick"].trade_id in filtered


def test_api_tokens_are_never_shown_whole_in_the_admin(admin_client, db):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=UserFactory())
    listing = admin_client.get(reverse("admin:authtoken_tokenproxy_changelist"))
    assert listing.status_code == 200
    page = listing.content.decode()
    assert f"{token.key[:4]}…" in page
    assert token.key not in page
