"""Per-user limits (``tradeapp.limits``): research runs at once, combinations per optimisation,
bars per run, bots per user. Each limit through the API and the pages: at the limit the request
is refused with its status (429 for runs at once and bots, 400 for sizes) and a message naming
the limit and the value, and nothing is stored; a user's own ``UserLimits`` row raises or lowers
it for that user only; staff edit it on the user's admin page; a finished or cancelled run frees
its place; two requests at the same moment cannot both take the last place.

The defaults are lowered per test (``settings``) so that a limit is reached with a few rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.urls import reverse
from rest_framework.test import APIClient

from backtests import services
from backtests.models import BacktestRun, OptimizationRun, RunStatus
from bots.models import Bot, BotEvent, Position
from tests.backtests.support import store_hourly_candles
from tests.bots.support import instrument_with_exchange, make_bot
from tests.factories import StaffUserFactory, UserFactory
from tests.support import eventually
from tradeapp import limits
from tradeapp.models import UserLimits

START = datetime(2026, 1, 1, tzinfo=UTC)
RUNS, COMBINATIONS, BARS, BOTS = 2, 6, 1_000, 2

#: One optimisation of each method, small enough for every limit below.
SEARCHES = {
    "grid": {"method": "grid", "space": {"fast": [5, 10], "slow": [20]}},
    "random": {"method": "random", "space": {}, "n_iter": 5, "seed": 1},
    "walk_forward": {"method": "walk_forward", "space": {"fast": [5, 10], "slow": [20]},
                     "train_bars": 48, "test_bars": 24},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _small_limits(settings):
    settings.TRADEAPP_LIMIT_CONCURRENT_RUNS = RUNS
    settings.TRADEAPP_LIMIT_COMBINATIONS = COMBINATIONS
    settings.TRADEAPP_LIMIT_BARS = BARS
    settings.TRADEAPP_LIMIT_BOTS = BOTS
    # Nobody signs in with a password here: a fast hasher keeps the users cheap.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def instrument(db):
    return instrument_with_exchange("BTC/USDT")


@pytest.fixture
def owner(db):
    return UserFactory()


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def stored() -> dict[str, int]:
    models = (BacktestRun, OptimizationRun, Bot, Position, BotEvent)
    return {model.__name__: model.objects.count() for model in models}


def backtest_body(instrument, **overrides) -> dict[str, Any]:
    return {
        "strategy": "sma_crossover", "parameters": {"fast": 5, "slow": 20},
        "instrument": instrument.pk, "timeframe": "1h", "start": "2026-01-01T00:00:00Z",
        "end": "2026-01-10T00:00:00Z",
    } | overrides  # fmt: skip


def search_body(instrument, method: str, **overrides) -> dict[str, Any]:
    body = backtest_body(instrument) | SEARCHES[method] | overrides
    del body["parameters"]
    return body


def queued_backtest(user, instrument) -> BacktestRun:
    return services.backtest_create(
        user=user, strategy="sma_crossover", parameters={"fast": 5, "slow": 20},
        instrument=instrument, timeframe="1h", start=START, end=START + timedelta(days=9),
        enqueue=False,
    )  # fmt: skip


def limit_error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:600])
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (status, "limit_exceeded"), error
    return error


def backtest_form(instrument, **overrides) -> dict[str, str]:
    return {
        "strategy": "sma_crossover", "sma_crossover__fast": "5", "sma_crossover__slow": "20",
        "instrument": str(instrument.pk), "timeframe": "1h", "start": "2026-01-01T00:00",
        "end": "2026-01-10T00:00", "cash": "10000", "fee": "0.001", "slippage": "0",
        "size": "1", "fill": "next_open", "stop_loss": "", "take_profit": "",
        "trailing_stop": "",
    } | overrides  # fmt: skip


def optimization_form(instrument, method: str = "grid", **overrides) -> dict[str, str]:
    search = {
        "grid": {"method": "grid", "sma_crossover__fast__values": "5, 10"},
        "random": {"method": "random", "n_iter": "5"},
        "walk_forward": {"method": "walk_forward", "sma_crossover__fast__values": "5, 10",
                         "train_bars": "48", "test_bars": "24"},
    }[method]  # fmt: skip
    return backtest_form(instrument) | {
        "objective": "sharpe", "n_iter": "50", "seed": "1", "sma_crossover__fast__values": "5",
        "sma_crossover__slow__values": "20",
    } | search | overrides  # fmt: skip


def bot_body(instrument, name: str = "one more") -> dict[str, Any]:
    return {"name": name, "strategy": "sma_crossover", "parameters": {"fast": 3, "slow": 8},
            "instrument": instrument.pk, "timeframe": "1m"}  # fmt: skip


def bot_form(instrument) -> dict[str, str]:
    return {
        "name": "one more", "strategy": "sma_crossover", "instrument": str(instrument.pk),
        "timeframe": "1m", "mode": "paper", "account": "", "capital": "5000",
        "max_position_fraction": "1", "stop_loss": "", "take_profit": "", "trailing_stop": "",
        "cooldown_candles": "0", "max_daily_loss": "", "fee": "0.001", "slippage": "0",
        "sma_crossover-fast": "3", "sma_crossover-slow": "8",
    }  # fmt: skip


# --- where the limits come from -------------------------------------------------------------------


def test_the_defaults_are_the_settings_and_the_environment_sets_them():
    code = (
        "import tradeapp.settings as s; print(s.TRADEAPP_LIMIT_CONCURRENT_RUNS, "
        "s.TRADEAPP_LIMIT_COMBINATIONS, s.TRADEAPP_LIMIT_BARS, s.TRADEAPP_LIMIT_BOTS)"
    )
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("TRADEAPP_LIMIT_")}  # fmt: skip
    run = [sys.executable, "-c", code]
    plain = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.split() == ["3", "100000", "2000000", "50"], plain.stderr
    env |= {"TRADEAPP_LIMIT_CONCURRENT_RUNS": "7", "TRADEAPP_LIMIT_COMBINATIONS": "500",
            "TRADEAPP_LIMIT_BARS": "9000", "TRADEAPP_LIMIT_BOTS": "4"}  # fmt: skip
    changed = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert changed.stdout.split() == ["7", "500", "9000", "4"], changed.stderr


def test_a_users_own_limits_override_the_defaults_for_that_user_only(owner):
    other, staff = UserFactory(), StaffUserFactory()
    defaults = limits.Limits(concurrent_runs=RUNS, combinations=COMBINATIONS, bars=BARS, bots=BOTS)
    assert limits.limits_for(owner) == defaults
    UserLimits.objects.create(user=owner, concurrent_runs=5, bots=0)  # others: the defaults
    assert limits.limits_for(owner) == limits.Limits(
        concurrent_runs=5, combinations=COMBINATIONS, bars=BARS, bots=0
    )
    assert limits.limits_for(other) == defaults
    assert limits.limits_for(staff) == defaults  # staff: the defaults unless their own row
    assert limits.limits_for(None) == defaults


# --- research runs at once ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["backtest", *SEARCHES])
def test_api_refuses_a_run_beyond_the_runs_at_once_with_429(owner, instrument, kind):
    for _ in range(RUNS):
        queued_backtest(owner, instrument)
    before = stored()
    path, body = (
        ("/api/backtests/", backtest_body(instrument))
        if kind == "backtest"
        else ("/api/optimizations/", search_body(instrument, kind))
    )
    error = limit_error(api(owner).post(path, body), 429)
    assert error["message"] == (
        f"you have {RUNS} research runs queued or running (your limit is {RUNS}); wait for one "
        "to finish or cancel one"
    )
    assert error["fields"] == {"non_field_errors": [error["message"]]}
    assert stored() == before
    # Another user's runs do not count.
    assert api(UserFactory()).post(path, body).status_code == 202


@pytest.mark.parametrize("kind", ["backtest", *SEARCHES])
def test_pages_refuse_a_run_beyond_the_runs_at_once(client, owner, instrument, kind):
    for _ in range(RUNS):
        queued_backtest(owner, instrument)
    before = stored()
    client.force_login(owner)
    if kind == "backtest":
        response = client.post(reverse("backtests:create"), backtest_form(instrument))
    else:
        data = optimization_form(instrument, kind)
        response = client.post(reverse("backtests:optimization-create"), data)
    assert response.status_code == 429
    html = response.content.decode()
    errors = html[html.index('id="form-errors"') :][:600]
    assert f"you have {RUNS} research runs queued or running (your limit is {RUNS})" in errors
    assert stored() == before


def test_a_finished_or_cancelled_run_frees_its_place(owner, instrument):
    store_hourly_candles(instrument.pk, start_ms=int(START.timestamp() * 1000), bars=240, seed=3)
    first, second = queued_backtest(owner, instrument), queued_backtest(owner, instrument)
    client = api(owner)
    limit_error(client.post("/api/backtests/", backtest_body(instrument)), 429)
    services.backtest_execute(first.pk)  # what the worker does
    first.refresh_from_db()
    assert first.status == RunStatus.DONE, first.error
    assert client.post("/api/backtests/", backtest_body(instrument)).status_code == 202
    limit_error(client.post("/api/optimizations/", search_body(instrument, "grid")), 429)
    assert api(owner).post(f"/api/backtests/{second.pk}/cancel/").status_code == 200
    assert client.post("/api/optimizations/", search_body(instrument, "grid")).status_code == 202


def test_a_users_own_runs_at_once_raise_or_lower_their_limit_only(owner, instrument):
    other = UserFactory()
    for user in (owner, other):
        for _ in range(RUNS):
            queued_backtest(user, instrument)
    UserLimits.objects.create(user=owner, concurrent_runs=RUNS + 1)
    assert api(owner).post("/api/backtests/", backtest_body(instrument)).status_code == 202
    limit_error(api(owner).post("/api/backtests/", backtest_body(instrument)), 429)
    limit_error(api(other).post("/api/backtests/", backtest_body(instrument)), 429)
    lowered = UserFactory()
    UserLimits.objects.create(user=lowered, concurrent_runs=0)
    error = limit_error(api(lowered).post("/api/backtests/", backtest_body(instrument)), 429)
    assert "you have 0 research runs queued or running (your limit is 0)" in error["message"]


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_the_same_moment_cannot_both_take_the_last_place():
    """The second request waits for the first one's transaction (the user's row lock; SQLite's
    IMMEDIATE transactions) and counts its run: one is stored, the other refused."""
    owner = UserFactory()
    instrument = instrument_with_exchange("BTC/USDT")
    queued_backtest(owner, instrument)  # one place of RUNS = 2 left
    first_stored, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def create(name: str, hold: bool) -> None:
        from django.db import transaction

        try:
            with transaction.atomic():
                outcome[name] = queued_backtest(owner, instrument).pk
                if hold:  # stored, not committed: the other request arrives now
                    first_stored.set()
                    release.wait(30)
        except limits.LimitExceeded as exc:
            outcome[name] = exc
        finally:
            first_stored.set()
            connections.close_all()

    first = threading.Thread(target=create, args=("first", True))
    first.start()
    assert first_stored.wait(30)
    second = threading.Thread(target=create, args=("second", False))
    second.start()
    if connection.vendor == "postgresql":  # the second one waits on the user's row lock
        eventually(
            _waiting_on_a_lock,
            timeout=20,
            message="the second request waits for the first one's lock",
        )
    release.set()
    first.join(30)
    second.join(30)
    assert isinstance(outcome["first"], int), outcome
    assert isinstance(outcome["second"], limits.LimitExceeded), outcome
    assert outcome["second"].status_code == limits.TOO_MANY
    assert BacktestRun.objects.filter(owner=owner).count() == RUNS


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


# --- combinations per optimisation --------------------------------------------------------------

TOO_MANY_COMBINATIONS = [
    ("grid", {"space": {"fast": [5, 10, 15], "slow": [20, 30, 40]}}, "space",
     "the grid holds 9 combinations; at most 6 (your limit per optimisation)"),
    ("random", {"n_iter": 7}, "n_iter", "7 draws; at most 6 (your limit per optimisation)"),
    ("walk_forward", {"space": {"fast": [5, 10, 15], "slow": [20, 30, 40]}}, "space",
     "each walk-forward window searches a grid of 9 combinations; at most 6"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "change", "field", "message"), TOO_MANY_COMBINATIONS)
def test_api_refuses_too_many_combinations_with_400(owner, instrument, method, change, field,
                                                    message):  # fmt: skip
    before = stored()
    body = search_body(instrument, method, **change)
    error = limit_error(api(owner).post("/api/optimizations/", body), 400)
    assert list(error["fields"]) == [field]
    assert message in error["fields"][field][0]
    assert stored() == before
    # At the limit it is accepted; a user's own limit raises it for them only.
    six = {"space": {"fast": [5, 10, 15], "slow": [20, 30]}}
    at_limit = {"grid": six, "random": {"n_iter": 6}, "walk_forward": six}[method]
    ok = api(owner).post("/api/optimizations/", search_body(instrument, method, **at_limit))
    assert ok.status_code == 202, ok.content
    mine = UserFactory()
    UserLimits.objects.create(user=mine, combinations=9)
    assert api(mine).post("/api/optimizations/", body).status_code == 202


@pytest.mark.parametrize(
    ("method", "change", "where", "message"),
    [
        ("grid", {"sma_crossover__fast__values": "5, 10, 15",
                  "sma_crossover__slow__values": "20, 30, 40"}, None,
         "the grid holds 9 combinations; at most 6"),
        ("random", {"n_iter": "7"}, "n_iter", "7 draws; at most 6"),
        ("walk_forward", {"sma_crossover__fast__values": "5, 10, 15",
                          "sma_crossover__slow__values": "20, 30, 40"}, None,
         "each walk-forward window searches a grid of 9 combinations; at most 6"),
    ],
)  # fmt: skip
def test_optimisation_page_refuses_too_many_combinations(client, owner, instrument, method,
                                                         change, where, message):  # fmt: skip
    client.force_login(owner)
    data = optimization_form(instrument, method, **change)
    response = client.post(reverse("backtests:optimization-create"), data)
    assert response.status_code == 200
    html = response.content.decode()
    if where is None:
        block = html[html.index('id="form-errors"') :][:600]
    else:
        block = html[html.index(f'data-field="{where}"') :][:1500]
    assert message in block, block
    assert not OptimizationRun.objects.exists()


# --- bars per run -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["backtest", *SEARCHES])
def test_api_refuses_a_period_of_too_many_bars_with_400(owner, instrument, kind):
    # 1m from 00:00 to 16:40 holds 1,001 close times: one beyond the limit of 1,000.
    period = {"timeframe": "1m", "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T16:40:00Z"}
    path, body = (
        ("/api/backtests/", backtest_body(instrument, **period))
        if kind == "backtest"
        else ("/api/optimizations/", search_body(instrument, kind, **period))
    )
    before = stored()
    error = limit_error(api(owner).post(path, body), 400)
    assert error["message"] == (
        "the period holds about 1,001 1m bars; at most 1,000 (your limit per backtest or "
        "optimisation): shorten the period or use a longer timeframe"
    )
    assert stored() == before
    at_limit = body | {"end": "2026-01-01T16:39:00Z"}
    assert api(owner).post(path, at_limit).status_code == 202
    UserLimits.objects.create(user=owner, bars=1_001)
    assert api(owner).post(path, body).status_code == 202


def test_backtest_page_refuses_a_period_of_too_many_bars(client, owner, instrument):
    client.force_login(owner)
    data = backtest_form(instrument, timeframe="1m", end="2026-01-01T16:40")
    response = client.post(reverse("backtests:create"), data)
    assert response.status_code == 200
    html = response.content.decode()
    assert "the period holds about 1,001 1m bars; at most 1,000" in html
    assert not BacktestRun.objects.exists()


def test_estimated_bars_count_the_close_times_of_the_period():
    assert limits.estimated_bars(START, START + timedelta(days=1), "1h") == 25
    assert limits.estimated_bars(START, START + timedelta(minutes=59), "1h") == 1
    assert limits.estimated_bars(START, START, "1m") is None
    assert limits.estimated_bars(START, START + timedelta(days=1), "7m") is None
    # The default bars: 3.8 years of 1m bars.
    assert limits.estimated_bars(START, START + timedelta(days=1388), "1m") < 2_000_000


# --- bots per user ------------------------------------------------------------------------------


def test_api_refuses_a_bot_beyond_the_limit_with_429(owner, instrument):
    for k in range(BOTS):
        make_bot(owner, instrument, name=f"b{k}")
    before = stored()
    error = limit_error(api(owner).post("/api/bots/", bot_body(instrument)), 429)
    assert error["message"] == (
        f"you have {BOTS} bots (your limit is {BOTS}); delete one to create another"
    )
    assert stored() == before
    deleted = api(owner).delete(f"/api/bots/{Bot.objects.filter(owner=owner).first().pk}/")
    assert deleted.status_code == 204
    assert api(owner).post("/api/bots/", bot_body(instrument)).status_code == 201
    UserLimits.objects.create(user=owner, bots=BOTS + 1)
    assert api(owner).post("/api/bots/", bot_body(instrument, "raised")).status_code == 201
    limit_error(api(owner).post("/api/bots/", bot_body(instrument, "too many")), 429)


def test_bot_page_refuses_a_bot_beyond_the_limit(client, owner, instrument):
    for k in range(BOTS):
        make_bot(owner, instrument, name=f"b{k}")
    before = stored()
    client.force_login(owner)
    response = client.post(reverse("bots:create"), bot_form(instrument))
    assert response.status_code == 429
    assert f"you have {BOTS} bots (your limit is {BOTS})" in response.content.decode()
    assert stored() == before
    other = UserFactory()
    client.force_login(other)
    assert client.post(reverse("bots:create"), bot_form(instrument)).status_code == 302


# --- the admin ----------------------------------------------------------------------------------


def user_change_form(user, **inline: str) -> dict[str, Any]:
    """The user's admin change form as a browser posts it, with the limits' inline."""
    data = {
        "username": user.username, "first_name": "", "last_name": "", "email": user.email,
        "is_active": "on", "last_login_0": "", "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "limits-TOTAL_FORMS": "1", "limits-INITIAL_FORMS": "0", "limits-MIN_NUM_FORMS": "0",
        "limits-MAX_NUM_FORMS": "1", "limits-0-user": str(user.pk), "limits-0-id": "",
        "limits-0-concurrent_runs": "", "limits-0-combinations": "", "limits-0-bars": "",
        "limits-0-bots": "", "limits-0-note": "",
    }  # fmt: skip
    return data | {f"limits-0-{name}": value for name, value in inline.items()}


def test_staff_set_and_clear_a_users_limits_on_the_users_admin_page(client, owner, instrument):
    client.force_login(StaffUserFactory(is_superuser=True))
    url = reverse("admin:auth_user_change", args=[owner.pk])
    page = client.get(url).content.decode()
    assert 'name="limits-0-concurrent_runs"' in page and "In effect" in page
    response = client.post(url, user_change_form(owner, concurrent_runs="0", bots="5",
                                                 note="stalled everyone"))  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:3000]
    row = UserLimits.objects.get(user=owner)
    assert (row.concurrent_runs, row.combinations, row.bars, row.bots, row.note) == (
        0, None, None, 5, "stalled everyone",
    )  # fmt: skip
    error = limit_error(api(owner).post("/api/backtests/", backtest_body(instrument)), 429)
    assert "(your limit is 0)" in error["message"]
    listing = client.get(reverse("admin:tradeapp_userlimits_changelist")).content.decode()
    assert owner.username in listing and "stalled everyone" in listing
    # Deleting the row gives the defaults back.
    data = user_change_form(owner, id=str(row.pk), concurrent_runs="0", bots="5")
    data |= {"limits-INITIAL_FORMS": "1", "limits-0-DELETE": "on"}
    assert client.post(url, data).status_code == 302
    assert not UserLimits.objects.filter(user=owner).exists()
    assert api(owner).post("/api/backtests/", backtest_body(instrument)).status_code == 202


def test_admin_rerun_at_the_limit_shows_the_message_and_stores_nothing(client, owner, instrument):
    runs = [queued_backtest(owner, instrument) for _ in range(RUNS)]
    owner_api = api(owner)
    client.force_login(StaffUserFactory(is_superuser=True))
    before = stored()
    response = client.post(
        reverse("admin:backtests_backtestrun_changelist"),
        {"action": "rerun_runs", "_selected_action": [runs[0].pk]}, follow=True,
    )  # fmt: skip
    assert response.status_code == 200
    text = [str(m) for m in response.context["messages"]]
    expected = (
        f"#{runs[0].pk}: {owner.username} has {RUNS} research runs queued or running (their "
        f"limit is {RUNS})"
    )
    assert any(expected in m for m in text), text
    assert stored() == before
    services.run_cancel(run=runs[1])
    opt = owner_api.post("/api/optimizations/", search_body(instrument, "grid")).json()
    response = client.post(
        reverse("admin:backtests_optimizationrun_changelist"),
        {"action": "rerun_runs", "_selected_action": [opt["id"]]}, follow=True,
    )  # fmt: skip
    text = [str(m) for m in response.context["messages"]]
    assert any(f"#{opt['id']}: {owner.username} has {RUNS} research" in m for m in text), text
    assert OptimizationRun.objects.count() == 1


def test_admin_add_form_shows_the_staff_members_own_limit(client, instrument):
    staff = StaffUserFactory(is_superuser=True)
    for _ in range(RUNS):
        queued_backtest(staff, instrument)
    client.force_login(staff)
    response = client.post(reverse("admin:backtests_optimizationrun_add"), {
        "strategy": "sma_crossover", "instrument": instrument.pk, "timeframe": "1h",
        "start_0": "2026-01-01", "start_1": "00:00:00", "end_0": "2026-01-05",
        "end_1": "00:00:00", "cash": "10000", "fee": "0.001", "slippage": "0", "size": "1",
        "fill": "next_open", "method": "grid", "space": '{"fast": [5], "slow": [20]}',
        "objective": "sharpe", "n_iter": "50", "seed": "0",
    })  # fmt: skip
    assert response.status_code == 200
    assert f"you have {RUNS} research runs queued or running" in response.content.decode()
    assert not OptimizationRun.objects.exists()


def test_a_search_too_big_and_otherwise_wrong_gets_every_message_as_invalid(owner, instrument):
    body = search_body(instrument, "grid", space={"fast": [5, 10, 15], "slow": [20, 30, 40]},
                       fee=2)  # fmt: skip
    response = api(owner).post("/api/optimizations/", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) == {"space", "fee"}, error
    assert "the grid holds 9 combinations" in error["fields"]["space"][0]
    assert not OptimizationRun.objects.exists()


def test_estimated_bars_take_the_texts_a_model_field_takes():
    assert limits.estimated_bars("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "1h") == 25
    assert limits.estimated_bars("yesterday", "2026-01-02T00:00:00Z", "1h") is None
    assert limits.estimated_bars(START.replace(tzinfo=None), START, "1h") is None


def test_admin_bot_add_at_the_owners_limit_shows_the_message_and_stores_nothing(
    client, owner, instrument
):
    for k in range(BOTS):
        make_bot(owner, instrument, name=f"b{k}")
    before = stored()
    client.force_login(StaffUserFactory(is_superuser=True))
    response = client.post(reverse("admin:bots_bot_add"), {
        "owner": owner.pk, "name": "one more", "strategy": "sma_crossover",
        "parameters": '{"fast": 5, "slow": 20}', "instrument": instrument.pk,
        "timeframe": "1m", "mode": "paper", "capital": "1000", "max_position_fraction": "1",
        "cooldown_candles": "0", "fee": "0.001", "slippage": "0",
    })  # fmt: skip
    assert response.status_code == 200
    assert f"you have {BOTS} bots (your limit is {BOTS})" in response.content.decode()
    assert stored() == before
