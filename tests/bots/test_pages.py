"""The bots' pages through Django's test client on the real database: sign-in and owner scoping,
the form generated from each strategy's parameter schema and the services' refusals shown next
to the right field, start/stop/delete/parity actions, the detail page's chart data; and the
dashboard's live route ``/ws/dashboard`` through the real ASGI application and channels-redis.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings
from django.urls import reverse

from bots import selectors
from bots.manager import BotManager
from bots.models import Bot, BotEvent, ExchangeAccount, Signal
from strategies.registry import builtin_names, get_strategy
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import StaffUserFactory, UserFactory
from tests.tradeapp.test_consumers import session_headers
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_BAD_REQUEST

HISTORY = 30


@pytest.fixture
def instrument(db):
    return instrument_with_exchange()


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def bot(owner, instrument):
    return make_bot(owner, instrument, name="Alpha")


@pytest.fixture
def traded(owner, instrument):
    """A running paper bot that decided on 90 candles and traded."""
    data = walk(120, seed=3)
    store(instrument, data, slice(0, HISTORY))
    bot = make_bot(owner, instrument, name="Trader")
    manager = BotManager()
    assert manager.start_bot(bot.pk)
    for close_ms in store(instrument, data, slice(HISTORY, 120)):
        manager.process_candle(instrument.pk, "1m", close_ms)
    bot.refresh_from_db()
    assert bot.trades.exists()
    return bot


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def json_block(html: str, element_id: str):
    pattern = rf'<script id="{element_id}" type="application/json">(.*?)</script>'
    match = re.search(pattern, html, re.S)
    assert match, f"no json_script #{element_id}"
    return json.loads(match.group(1))


def form_data(instrument, **overrides) -> dict[str, object]:
    data = {
        "name": "New bot", "strategy": "sma_crossover", "instrument": instrument.pk,
        "timeframe": "1m", "mode": "paper", "account": "", "capital": "5000",
        "max_position_fraction": "1", "stop_loss": "", "take_profit": "0.02",
        "trailing_stop": "", "cooldown_candles": "0", "max_daily_loss": "", "fee": "0.001",
        "slippage": "0", "sma_crossover-fast": "3", "sma_crossover-slow": "8",
    }  # fmt: skip
    data.update(overrides)
    return data


# --- access -----------------------------------------------------------------------------------


def test_pages_anonymous_redirected_to_sign_in(client, bot):
    pages = ["/", "/bots/", "/bots/new/", f"/bots/{bot.pk}/", f"/bots/{bot.pk}/edit/"]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), (
            url
        )
    for action in ("start", "stop", "delete", "parity"):
        response = client.post(reverse(f"bots:{action}", args=[bot.pk]))
        assert response.status_code == 302 and reverse("login") in response["Location"], action
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED


def test_pages_another_users_bot_is_404(bot):
    other = signed_in(UserFactory())
    for url in (f"/bots/{bot.pk}/", f"/bots/{bot.pk}/edit/"):
        assert other.get(url).status_code == 404, url
    for action in ("start", "stop", "delete", "parity"):
        assert other.post(reverse(f"bots:{action}", args=[bot.pk])).status_code == 404, action
    assert other.post(f"/bots/{bot.pk}/edit/", {"name": "stolen"}).status_code == 404
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED and bot.name == "Alpha"
    listing = other.get("/bots/").content.decode()
    assert "Alpha" not in listing and "Alpha" not in other.get("/").content.decode()
    # Staff see it.
    assert signed_in(StaffUserFactory()).get(f"/bots/{bot.pk}/").status_code == 200


def test_actions_are_post_only(owner, bot):
    client = signed_in(owner)
    for action in ("start", "stop", "delete", "parity"):
        assert client.get(reverse(f"bots:{action}", args=[bot.pk])).status_code == 405


# --- create -----------------------------------------------------------------------------------


def test_create_form_renders_each_strategys_parameter_fields(owner, instrument):
    html = signed_in(owner).get("/bots/new/").content.decode()
    for name in builtin_names():
        assert f'id="params-{name}"' in html
        for spec in get_strategy(name).parameter_specs:
            match = re.search(rf'<input [^>]*name="{name}-{spec.name}"[^>]*>', html)
            assert match, f"{name}.{spec.name}"
            tag = match.group(0)
            if spec.minimum is not None:
                assert f'min="{spec.minimum:g}"' in tag or f'min="{spec.minimum}"' in tag
            if spec.maximum is not None:
                assert f'max="{spec.maximum:g}"' in tag or f'max="{spec.maximum}"' in tag
            assert f'value="{spec.default}"' in tag or f'value="{spec.default:g}"' in tag
        if get_strategy(name).parameter_specs and get_strategy(name).parameter_specs[0].help:
            assert get_strategy(name).parameter_specs[0].help in html
    assert str(instrument) in html
    assert 'value="paper"' in html and "checked" in html


def test_create_preselects_strategy_from_query(owner, instrument):
    html = signed_in(owner).get("/bots/new/?strategy=rsi_reversion").content.decode()
    assert re.search(r'<option value="rsi_reversion" selected>', html)


def test_create_valid_post_creates_a_stopped_bot(owner, instrument):
    client = signed_in(owner)
    response = client.post("/bots/new/", form_data(instrument))
    bot = Bot.objects.get(owner=owner, name="New bot")
    assert response.status_code == 302 and response["Location"] == f"/bots/{bot.pk}/"
    assert bot.parameters == {"fast": 3, "slow": 8}
    assert bot.status == Bot.Status.STOPPED and bot.mode == Bot.Mode.PAPER
    assert bot.capital == Decimal(5000) and bot.take_profit == 0.02 and bot.stop_loss is None
    assert BotEvent.objects.filter(bot=bot, kind=BotEvent.Kind.CREATED).exists()
    assert "created (stopped)" in client.get(f"/bots/{bot.pk}/").content.decode()
    assert "New bot" in client.get("/bots/").content.decode()
    dashboard = client.get("/").content.decode()
    assert f'data-bot-id="{bot.pk}"' in dashboard


def test_create_reads_only_the_chosen_strategys_parameters(owner, instrument):
    # Without JavaScript every fieldset is submitted: the others' values are not read.
    data = form_data(
        instrument, strategy="rsi_reversion", **{"rsi_reversion-period": "7"},
        **{"rsi_reversion-oversold": "25", "rsi_reversion-overbought": "75"},
        **{"ema_crossover-fast": "999999"},
    )  # fmt: skip
    response = signed_in(owner).post("/bots/new/", data)
    assert response.status_code == 302
    assert Bot.objects.get(owner=owner).parameters == {
        "period": 7, "oversold": 25.0, "overbought": 75.0
    }  # fmt: skip


def test_create_cross_parameter_error_shown_next_to_the_parameter(owner, instrument):
    data = form_data(instrument, **{"sma_crossover-fast": "20", "sma_crossover-slow": "10"})
    response = signed_in(owner).post("/bots/new/", data)
    assert response.status_code == 200
    html = response.content.decode()
    error = re.search(r'id="id_sma_crossover-fast_error"[^>]*>(.*?)</ul>', html, re.S)
    assert error and "fast (20) must be less than slow (10)" in error.group(1)
    assert 'aria-invalid="true"' in html
    assert Bot.objects.count() == 0 and BotEvent.objects.count() == 0
    # The submitted values are kept.
    field = re.search(r'<input [^>]*name="sma_crossover-fast"[^>]*>', html).group(0)
    assert 'value="20"' in field


def test_create_out_of_range_parameter_refused(owner, instrument):
    data = form_data(instrument, **{"sma_crossover-slow": "5000"})
    html = signed_in(owner).post("/bots/new/", data).content.decode()
    error = re.search(r'id="id_sma_crossover-slow_error"[^>]*>(.*?)</ul>', html, re.S)
    assert error and "1000" in error.group(1)
    assert not Bot.objects.exists()


def test_create_risk_field_and_capital_errors(owner, instrument):
    data = form_data(instrument, capital="0", stop_loss="1.5", max_position_fraction="0")
    html = signed_in(owner).post("/bots/new/", data).content.decode()
    assert re.search(r'id="id_capital_error"[^>]*>.*the capital must be positive', html, re.S)
    assert re.search(r'id="id_stop_loss_error"', html)
    assert re.search(r'id="id_max_position_fraction_error"', html)
    assert not Bot.objects.exists()


def test_create_live_needs_the_users_own_account(owner, instrument):
    client = signed_in(owner)
    html = client.post("/bots/new/", form_data(instrument, mode="live")).content.decode()
    assert re.search(r'id="id_account_error"[^>]*>.*needs an exchange account', html, re.S)
    foreign = ExchangeAccount.objects.create(
        owner=UserFactory(), exchange=instrument.exchange, label="theirs"
    )
    data = form_data(instrument, mode="live", account=foreign.pk)
    html = client.post("/bots/new/", data).content.decode()
    assert re.search(r'id="id_account_error"', html)
    assert "theirs" not in html  # not even offered
    assert not Bot.objects.exists()
    mine = ExchangeAccount.objects.create(owner=owner, exchange=instrument.exchange, label="mine")
    response = client.post("/bots/new/", form_data(instrument, mode="live", account=mine.pk))
    assert response.status_code == 302
    assert Bot.objects.get(owner=owner).account == mine


# --- edit -------------------------------------------------------------------------------------


def test_edit_while_running_refused_clearly(owner, bot, instrument):
    assert BotManager().start_bot(bot.pk)
    client = signed_in(owner)
    page = client.get(f"/bots/{bot.pk}/edit/").content.decode()
    assert 'id="edit-locked"' in page and "stop it first" in page
    assert re.search(r'<button type="submit" class="primary" id="bot-submit" disabled>', page)
    data = form_data(instrument, name="Renamed", **{"sma_crossover-fast": "4"})
    response = client.post(f"/bots/{bot.pk}/edit/", data)
    assert response.status_code == 409
    assert "stop the bot before changing it" in response.content.decode()
    bot.refresh_from_db()
    assert bot.name == "Alpha" and bot.parameters == {"fast": 3, "slow": 8}


def test_edit_stopped_bot_saves_through_the_services(owner, bot, instrument):
    client = signed_in(owner)
    page = client.get(f"/bots/{bot.pk}/edit/").content.decode()
    assert 'id="fixed-settings"' in page and 'value="Alpha"' in page
    assert 'name="rsi_reversion-period"' not in page  # its own strategy only
    data = form_data(instrument, name="Renamed", stop_loss="0.05", **{"sma_crossover-fast": "4"})
    response = client.post(f"/bots/{bot.pk}/edit/", data)
    assert response.status_code == 302
    bot.refresh_from_db()
    assert bot.name == "Renamed" and bot.parameters == {"fast": 4, "slow": 8}
    assert bot.stop_loss == 0.05
    event = BotEvent.objects.get(bot=bot, kind=BotEvent.Kind.STATE_UPDATED)
    assert event.actor == owner and "parameters" in event.message


def test_edit_parameter_error_next_to_the_field_and_nothing_changed(owner, bot, instrument):
    data = form_data(instrument, name="Renamed", **{"sma_crossover-fast": "9"})
    response = signed_in(owner).post(f"/bots/{bot.pk}/edit/", data)
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'id="id_sma_crossover-fast_error"[^>]*>.*must be less than slow', html, re.S)
    bot.refresh_from_db()
    assert bot.name == "Alpha" and bot.parameters == {"fast": 3, "slow": 8}
    assert not BotEvent.objects.filter(bot=bot, kind=BotEvent.Kind.STATE_UPDATED).exists()


# --- actions ----------------------------------------------------------------------------------


def test_start_and_stop_need_the_csrf_token(owner, bot):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(f"/bots/{bot.pk}/start/").status_code == 403
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED

    page = client.get(f"/bots/{bot.pk}/").content.decode()
    start_form = re.search(r'<form id="start-form".*?</form>', page, re.S).group(0)
    assert 'data-confirm="Start Alpha?"' in start_form
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', start_form).group(1)
    response = client.post(f"/bots/{bot.pk}/start/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == f"/bots/{bot.pk}/"
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING
    page = client.get(f"/bots/{bot.pk}/").content.decode()
    assert "Bot “Alpha” started." in page
    assert re.search(r'<span id="bot-status" class="badge running"[^>]*>running</span>', page)
    assert re.search(r'<form id="start-form"[^>]* hidden>', page)

    response = client.post(f"/bots/{bot.pk}/stop/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED
    page = client.get(f"/bots/{bot.pk}/").content.decode()
    assert "stopped; its open orders were cancelled" in page


@override_settings(TRADEAPP_LIVE_TRADING=False)
def test_start_refused_by_the_live_guard_shows_why(owner, instrument):
    account = ExchangeAccount.objects.create(
        owner=owner, exchange=instrument.exchange, label="main"
    )
    live = make_bot(owner, instrument, name="Live one", mode="live", account=account)
    client = signed_in(owner)
    response = client.post(f"/bots/{live.pk}/start/", follow=True)
    assert "not started" in response.content.decode()
    assert "live trading is disabled" in response.content.decode()
    live.refresh_from_db()
    assert live.status == Bot.Status.STOPPED


def test_delete_only_when_stopped(owner, bot):
    client = signed_in(owner)
    BotManager().start_bot(bot.pk)
    response = client.post(f"/bots/{bot.pk}/delete/", follow=True)
    assert "stop the bot before deleting it" in response.content.decode()
    assert Bot.objects.filter(pk=bot.pk).exists()
    BotManager().stop_bot(bot.pk)
    response = client.post(f"/bots/{bot.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/bots/"
    assert not Bot.objects.filter(pk=bot.pk).exists()


def test_parity_post_shows_the_report(owner, traded):
    response = signed_in(owner).post(f"/bots/{traded.pk}/parity/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="parity-result" data-ok="true"' in html
    assert "signals: 90/90 equal" in html and "PARITY OK" in html


def test_parity_refuses_an_oversized_check(owner, traded, monkeypatch):
    from bots import views

    monkeypatch.setattr(views, "PARITY_MAX_SIGNALS", 10)
    response = signed_in(owner).post(f"/bots/{traded.pk}/parity/", follow=True)
    assert "the page checks at most 10" in response.content.decode()
    assert f"manage.py parity_check {traded.pk}" in response.content.decode()


# --- detail -----------------------------------------------------------------------------------


def test_detail_carries_candles_indicators_markers_and_history(owner, traded):
    html = signed_in(owner).get(f"/bots/{traded.pk}/").content.decode()
    chart = json_block(html, "bot-chart")
    assert len(chart["candles"]) == 120 and chart["error"] == ""
    times = [c["timestamp"] for c in chart["candles"]]
    assert times == sorted(times)
    assert set(chart["indicators"]) == {"fast_sma", "slow_sma"}
    slow = chart["indicators"]["slow_sma"]
    assert slow["pane"] == "price" and slow["color"] and len(slow["values"]) == 120
    assert slow["values"][:7] == [None] * 7 and slow["values"][7] is not None
    closes = [c["close"] for c in chart["candles"]]
    assert slow["values"][-1] == pytest.approx(sum(closes[-8:]) / 8)
    executed = Signal.objects.filter(bot=traded, executed=True).count()
    assert executed and len(chart["markers"]) == executed
    assert {m["side"] for m in chart["markers"]} <= {"buy", "sell"}

    data = json_block(html, "bot-data")
    assert data["streams"]["status"] == f"/ws/bot/{traded.pk}/status"
    assert data["bot"]["instrument_id"] == traded.instrument_id
    equity = json_block(html, "bot-equity")
    assert equity[0]["value"] == 10_000 and len(equity) == traded.trades.count() + 2
    assert equity[-1]["value"] == pytest.approx(float(traded.equity))

    rows = re.findall(r'<tr data-signal-id="(\d+)"', html)
    newest = list(Signal.objects.filter(bot=traded).order_by("-time")[:50].values_list("pk"))
    assert [int(r) for r in rows] == [pk for (pk,) in newest]
    for element in ('id="price-chart"', 'id="equity-value"', 'id="stream-state-status"',
                    'id="stream-state-portfolio"', 'id="decision-log"', 'id="stop-form"',
                    'id="orders"', 'id="trades"', 'id="parity-form"'):  # fmt: skip
        assert element in html
    assert f"{float(traded.equity):,.2f}".replace(",", "") in html.replace(",", "")


def test_detail_with_higher_timeframe_and_no_candles(owner, instrument):
    bot = make_bot(owner, instrument, timeframe="5m", strategy="rsi_reversion", parameters={})
    html = signed_in(owner).get(f"/bots/{bot.pk}/").content.decode()
    chart = json_block(html, "bot-chart")
    assert chart["candles"] == [] and chart["indicators"] == {}
    assert 'id="no-candles"' in html


# --- dashboard and list -----------------------------------------------------------------------


def test_dashboard_rows_totals_and_events(owner, traded, instrument):
    idle = make_bot(owner, instrument, name="Idle")
    make_bot(UserFactory(), instrument, name="Someone else's")
    html = signed_in(owner).get("/").content.decode()
    data = json_block(html, "dashboard-data")
    assert [row["id"] for row in data["bots"]] == [idle.pk, traded.pk]  # by name
    assert data["stream"] == f"/ws/dashboard?bots={idle.pk},{traded.pk}"
    row = data["bots"][1]
    assert row["status"] == "running" and row["equity"] == pytest.approx(float(traded.equity))
    assert row["pnl"] == pytest.approx(float(traded.equity - traded.capital))
    last = Signal.objects.filter(bot=traded).order_by("-time").first()
    assert row["last_signal"]["action"] == last.action
    assert "Someone else" not in html
    # The totals equal user_portfolio's.
    expected = selectors.user_portfolio(owner)["total"]
    totals = selectors.portfolio_totals(selectors.bots_visible(owner))
    for name in ("capital", "equity", "unrealized_pnl"):
        assert Decimal(totals[name]) == Decimal(expected[name]), name
    for name in ("realized_pnl", "fees"):  # sums by the database (floats in SQLite)
        assert float(totals[name]) == pytest.approx(float(expected[name]), rel=1e-12), name
    assert totals["running"] == 1 and totals["bots"] == 2
    assert '<span id="total-running">1</span>' in html
    assert re.search(r'<tr data-event-id="\d+">', html) and "Started" in html


def test_dashboard_staff_toggle_shows_everyone(instrument):
    staff, other = StaffUserFactory(), UserFactory()
    mine = make_bot(staff, instrument, name="Staff bot")
    theirs = make_bot(other, instrument, name="User bot")
    client = signed_in(staff)
    own = json_block(client.get("/").content.decode(), "dashboard-data")
    assert [row["id"] for row in own["bots"]] == [mine.pk]
    html = client.get("/?all=1").content.decode()
    everyone = json_block(html, "dashboard-data")
    assert {row["id"] for row in everyone["bots"]} == {mine.pk, theirs.pk}
    assert everyone["stream"].endswith("&all=1")
    assert "(platform-wide)" in html and "User bot" in html
    # ?all=1 means nothing for a non-staff user.
    plain = json_block(signed_in(other).get("/?all=1").content.decode(), "dashboard-data")
    assert [row["id"] for row in plain["bots"]] == [theirs.pk]


def test_dashboard_without_bots_invites_to_create_one(owner):
    html = signed_in(owner).get("/").content.decode()
    assert 'id="no-bots"' in html and reverse("bots:create") in html


def test_bot_list_filters(owner, instrument):
    running = make_bot(owner, instrument, name="Runner")
    make_bot(owner, instrument, name="Sleeper", strategy="rsi_reversion", parameters={})
    BotManager().start_bot(running.pk)
    client = signed_in(owner)
    html = client.get("/bots/").content.decode()
    assert "Runner" in html and "Sleeper" in html and reverse("bots:create") in html
    html = client.get("/bots/?status=running").content.decode()
    assert "Runner" in html and "Sleeper" not in html
    html = client.get("/bots/?strategy=rsi_reversion&mode=paper").content.decode()
    assert "Sleeper" in html and "Runner" not in html
    assert "No bots match these filters" in client.get("/bots/?mode=live").content.decode()
    # An unknown value is ignored, not an error.
    assert "Runner" in client.get("/bots/?status=bogus").content.decode()


# --- /ws/dashboard ------------------------------------------------------------------------------


async def _connect(route: str, user):
    headers = await database_sync_to_async(session_headers)(user)
    communicator = WebsocketCommunicator(application, route, headers=headers)
    connected, code = await communicator.connect(timeout=10)
    return communicator, connected, code


@pytest.fixture
def live_world(transactional_db):
    owner, other = UserFactory(), UserFactory()
    instrument = instrument_with_exchange("SOL/USDT")
    data = walk(80, seed=5)
    store(instrument, data, slice(0, 20))
    bot = make_bot(owner, instrument, name="Live view", parameters={"fast": 2, "slow": 5})
    manager = BotManager()
    manager.start_bot(bot.pk)
    for close_ms in store(instrument, data, slice(20, 40)):
        manager.process_candle(instrument.pk, "1m", close_ms)
    return {
        "owner": owner, "other": other, "bot": bot, "instrument": instrument, "data": data,
        "manager": manager,
    }  # fmt: skip


@pytest.mark.asyncio
async def test_dashboard_stream_snapshot_then_events_in_sequence(live_world):
    bot = live_world["bot"]
    ws, connected, _ = await _connect(f"/ws/dashboard?bots={bot.pk}", live_world["owner"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert [row["id"] for row in snapshot["bots"]] == [bot.pk]
    assert snapshot["bots"][0]["status"] == "running"
    assert snapshot["totals"]["running"] == 1
    signals_seq = snapshot["streams"][f"bot_signals:{bot.pk}"]
    trades_seq = snapshot["streams"][f"trade_updates:{bot.pk}"]
    assert "system_events" not in snapshot["streams"]

    def next_candle() -> None:
        (close_ms,) = store(live_world["instrument"], live_world["data"], slice(40, 41))
        live_world["manager"].process_candle(live_world["instrument"].pk, "1m", close_ms)

    await database_sync_to_async(next_candle)()
    seen: dict[str, list[dict]] = {}
    while "signal.created" not in seen or "portfolio.updated" not in seen:
        event = await ws.receive_json_from(timeout=5)
        seen.setdefault(event["type"], []).append(event)
    signal = seen["signal.created"][0]
    assert signal["bot_id"] == bot.pk and signal["seq"] == signals_seq + 1
    portfolio = seen["portfolio.updated"][0]
    assert portfolio["channel"] == f"trade_updates:{bot.pk}" and portfolio["seq"] > trades_seq

    await database_sync_to_async(live_world["manager"].stop_bot)(bot.pk)
    event = await ws.receive_json_from(timeout=5)
    while event["type"] != "bot.status":
        event = await ws.receive_json_from(timeout=5)
    assert event["status"] == "stopped" and event["seq"] == signal["seq"] + 1
    await ws.disconnect()


@pytest.mark.asyncio
async def test_dashboard_stream_leaves_out_other_users_bots(live_world):
    bot = live_world["bot"]
    ws, connected, _ = await _connect(f"/ws/dashboard?bots={bot.pk}", live_world["other"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["bots"] == [] and snapshot["streams"] == {}
    assert snapshot["totals"]["bots"] == 0
    await database_sync_to_async(live_world["manager"].stop_bot)(bot.pk)
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()


@pytest.mark.asyncio
async def test_dashboard_stream_staff_get_system_events_and_bad_queries_refused(live_world):
    staff = await database_sync_to_async(StaffUserFactory)()
    bot = live_world["bot"]
    ws, connected, _ = await _connect(f"/ws/dashboard?bots={bot.pk}&all=1", staff)
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert [row["id"] for row in snapshot["bots"]] == [bot.pk]
    assert "system_events" in snapshot["streams"] and snapshot["totals"]["bots"] == 1
    await database_sync_to_async(live_world["manager"].stop_bot)(bot.pk)
    types = set()
    while "bot.stopped" not in types:
        event = await ws.receive_json_from(timeout=5)
        types.add(event["type"])
    await ws.disconnect()

    too_many = ",".join(str(i) for i in range(1, 52))
    for query in ("bots=1,x", f"bots={too_many}"):
        _, connected, code = await _connect(f"/ws/dashboard?{query}", live_world["owner"])
        assert not connected and code == CLOSE_BAD_REQUEST, query
    _, connected, _ = await _connect("/ws/dashboard", None)
    assert not connected
