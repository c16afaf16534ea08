"""The REST API: sign-in on every endpoint (enumerated from the URLconf), owner scoping, the one
error shape, write-only secrets, cursor pages, throttling and a valid OpenAPI schema."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework import throttling
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from backtests import services as backtests_services
from backtests.models import OptimizationResult, OptimizationRun
from bots.manager import BotManager
from bots.models import Bot, ExchangeAccount
from marketdata.models import Exchange
from tests.backtests.support import store_hourly_candles
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import StaffUserFactory, UserFactory

# Reached without signing in, on purpose: where a token is obtained with a password.
PUBLIC = {"/api/token/"}
SAMPLES = {"pk": "1", "name": "sma_crossover"}


def api_paths() -> list[str]:
    """Every URL pattern under /api/ as a concrete path (sample values for its arguments)."""
    found: list[str] = []

    def walk_patterns(patterns: list, prefix: str) -> None:
        for entry in patterns:
            text = str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk_patterns(entry.url_patterns, prefix + text)
            elif isinstance(entry, URLPattern):
                found.append(prefix + text)

    walk_patterns(get_resolver().url_patterns, "")
    paths = set()
    for raw in found:
        # The ``.json`` suffix variants are the same views as the plain patterns.
        if not raw.startswith("api/") or "format>" in raw:
            continue
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLES.get(m.group(1), "1"), raw)
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLES.get(m.group(1), "1"), path)
        path = path.replace("^", "").replace("$", "").replace("\\.", ".").replace("/?", "/")
        paths.add("/" + path)
    for path in paths:
        resolve(path)  # every pattern became a path that reaches its view
    return sorted(paths)


@pytest.fixture
def world(db):
    owner, other, staff = UserFactory(), UserFactory(), StaffUserFactory()
    instrument = instrument_with_exchange("ETH/USDT")
    data = walk(300, seed=5)
    store(instrument, data, slice(0, 40))
    bot = make_bot(owner, instrument, parameters={"fast": 2, "slow": 5})
    manager = BotManager()
    manager.start_bot(bot.pk)
    for close_ms in store(instrument, data, slice(40, 160)):
        manager.process_candle(instrument.pk, "1m", close_ms)
    return {"owner": owner, "other": other, "staff": staff, "bot": bot, "instrument": instrument}


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_every_api_endpoint_refuses_anonymous_callers(world):
    paths = api_paths()
    assert {"/api/bots/", "/api/bots/1/start/", "/api/candles/", "/api/schema/"} <= set(paths)
    anonymous = client_for()
    for path in paths:
        if path in PUBLIC:
            continue
        for method in ("get", "post", "patch", "delete"):
            response = getattr(anonymous, method)(path)
            if response.status_code == 405:
                continue
            assert response.status_code in (401, 403), (method, path, response.status_code)
            if path.startswith(("/api/docs", "/api/schema")):
                continue  # an HTML page, an OpenAPI document
            assert_error(response, response.status_code, "not_authenticated")


def test_token_authentication(world):
    token = Token.objects.create(user=world["owner"])
    client = client_for()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert [b["id"] for b in client.get("/api/bots/").json()["results"]] == [world["bot"].pk]
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert_error(client.get("/api/bots/"), 401, "authentication_failed")


@pytest.mark.parametrize(
    ("listing", "detail"),
    [
        ("/api/bots/", "/api/bots/{bot}/"),
        ("/api/signals/?bot={bot}", None),
        ("/api/orders/?bot={bot}", None),
        ("/api/trades/?bot={bot}", None),
        ("/api/positions/?bot={bot}", None),
        ("/api/events/?bot={bot}", None),
    ],
)
def test_each_user_sees_only_their_own_rows(world, listing, detail):
    bot = world["bot"]
    mine = client_for(world["owner"]).get(listing.format(bot=bot.pk)).json()["results"]
    assert mine, listing
    theirs = client_for(world["other"]).get(listing.format(bot=bot.pk))
    assert theirs.status_code == 200 and theirs.json()["results"] == []
    staff = client_for(world["staff"]).get(listing.format(bot=bot.pk)).json()["results"]
    assert len(staff) == len(mine)
    first = mine[0]["id"]
    path = (detail or listing.split("?")[0] + "{id}/").format(bot=bot.pk, id=first)
    assert client_for(world["owner"]).get(path).status_code == 200
    assert_error(client_for(world["other"]).get(path), 404, "not_found")


def test_another_users_bot_cannot_be_acted_on(world):
    bot = world["bot"]
    other = client_for(world["other"])
    for path in (f"/api/bots/{bot.pk}/stop/", f"/api/bots/{bot.pk}/start/"):
        assert_error(other.post(path), 404, "not_found")
    assert_error(other.patch(f"/api/bots/{bot.pk}/", {"name": "mine now"}), 404, "not_found")
    assert_error(other.delete(f"/api/bots/{bot.pk}/"), 404, "not_found")
    assert_error(other.get(f"/api/bots/{bot.pk}/portfolio/"), 404, "not_found")
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING and bot.name == "bot"


def test_bot_lifecycle_through_the_api(world):
    owner = client_for(world["owner"])
    created = owner.post(
        "/api/bots/",
        {"name": "api bot", "strategy": "ema_crossover", "parameters": {"fast": 4},
         "instrument": world["instrument"].pk, "timeframe": "1m", "capital": "2500",
         "stop_loss": 0.02},
    )  # fmt: skip
    assert created.status_code == 201, created.content
    bot = created.json()
    assert bot["status"] == "stopped" and bot["parameters"]["fast"] == 4
    assert bot["parameters"]["slow"] == 26  # the strategy's default filled in
    started = owner.post(f"/api/bots/{bot['id']}/start/")
    assert started.status_code == 200 and started.json()["status"] == "running"
    error = assert_error(owner.patch(f"/api/bots/{bot['id']}/", {"name": "x"}), 409, "conflict")
    assert "stop the bot" in error["message"]
    error = assert_error(owner.delete(f"/api/bots/{bot['id']}/"), 409, "conflict")
    assert "stop the bot" in error["message"]
    assert owner.post(f"/api/bots/{bot['id']}/stop/").json()["status"] == "stopped"
    renamed = owner.patch(f"/api/bots/{bot['id']}/", {"name": "renamed", "stop_loss": 0.03})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert renamed.json()["stop_loss"] == 0.03
    audit = owner.get(f"/api/events/?bot={bot['id']}&kind=state_updated").json()["results"]
    assert [event["message"] for event in audit] == ["name, stop_loss"]
    error = assert_error(
        owner.patch(f"/api/bots/{bot['id']}/", {"strategy": "sma_crossover"}), 400, "invalid"
    )
    assert "strategy" in error["fields"]
    assert owner.delete(f"/api/bots/{bot['id']}/").status_code == 204
    portfolio = owner.get("/api/portfolio/").json()
    assert [row["bot"] for row in portfolio["bots"]] == [world["bot"].pk]
    assert Decimal(portfolio["total"]["capital"]) == 10_000


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"strategy": "sma_crossover", "parameters": {"fast": 30, "slow": 10}}, "parameters"),
        ({"strategy": "sma_crossover", "parameters": {"fast": "ten"}}, "parameters"),
        ({"strategy": "sma_crossover", "parameters": {"nope": 1}}, "parameters"),
        ({"strategy": "no_such_strategy"}, "strategy"),
        ({"strategy": "sma_crossover", "capital": "-5"}, "capital"),
        ({"strategy": "sma_crossover", "stop_loss": 2}, "stop_loss"),
        ({"strategy": "sma_crossover", "timeframe": "2m"}, "timeframe"),
        ({"strategy": "sma_crossover", "instrument": 999999}, "instrument"),
    ],
)
def test_bad_bot_payloads_get_field_errors_and_store_nothing(world, payload, field):
    body = {"name": "bad", "instrument": world["instrument"].pk, **payload}
    error = assert_error(client_for(world["owner"]).post("/api/bots/", body), 400, "invalid")
    assert field in error["fields"], error
    assert not Bot.objects.filter(name="bad").exists()


def test_malformed_json_is_a_parse_error(world):
    response = client_for(world["owner"]).post(
        "/api/bots/", data="{not json", content_type="application/json"
    )
    assert_error(response, 400, "parse_error")


def test_exchange_secrets_are_write_only_and_encrypted(world):
    Exchange.objects.get_or_create(ccxt_id="binance", defaults={"name": "Binance"})
    owner = client_for(world["owner"])
    created = owner.post(
        "/api/accounts/",
        {"exchange": "binance", "label": "main", "api_key": "KEY-123", "api_secret": "SECRET-9"},
    )
    assert created.status_code == 201, created.content
    body = created.content.decode()
    assert "KEY-123" not in body and "SECRET-9" not in body
    assert created.json()["has_api_key"] and created.json()["has_api_secret"]
    account = ExchangeAccount.objects.get(pk=created.json()["id"])
    assert "SECRET-9" not in account.api_secret_encrypted and account.api_secret() == "SECRET-9"
    listed = owner.get("/api/accounts/").content.decode()
    assert "SECRET-9" not in listed and "KEY-123" not in listed
    assert client_for(world["other"]).get("/api/accounts/").json()["results"] == []
    assert_error(client_for(world["other"]).get(f"/api/accounts/{account.pk}/"), 404, "not_found")
    # An account a bot uses cannot be deleted; once the bot is gone it can.
    user_bot = make_bot(world["owner"], world["instrument"], name="with account", account=account)
    error = assert_error(owner.delete(f"/api/accounts/{account.pk}/"), 409, "conflict")
    assert "with account" in error["message"]
    user_bot.delete()
    assert owner.delete(f"/api/accounts/{account.pk}/").status_code == 204


def test_candles_are_cursor_pages_oldest_first(world):
    client = client_for(world["other"])  # market data is everyone's
    path = f"/api/candles/?instrument={world['instrument'].pk}&timeframe=1m&page_size=70"
    seen = []
    while path:
        page = client.get(path).json()
        seen += [row["close_time"] for row in page["results"]]
        path = page["next"]
    assert len(seen) == 160 and seen == sorted(seen)
    error = assert_error(client.get("/api/candles/?timeframe=1m"), 400, "invalid")
    assert "instrument" in error["fields"]
    assert_error(client.get("/api/candles/?instrument=1&timeframe=7m"), 400, "invalid")
    assert_error(client.get("/api/candles/?instrument=99999&timeframe=1m"), 404, "not_found")


def test_strategy_catalog(world):
    client = client_for(world["other"])
    catalog = client.get("/api/strategies/").json()
    names = [entry["name"] for entry in catalog]
    assert "sma_crossover" in names
    one = client.get("/api/strategies/sma_crossover/").json()
    assert [p["name"] for p in one["parameters"]] == ["fast", "slow"]
    assert_error(client.get("/api/strategies/nope/"), 404, "not_found")


def test_throttling_answers_429_in_the_error_shape(world, monkeypatch):
    cache.clear()  # the request history of earlier tests' users
    monkeypatch.setattr(
        throttling.UserRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "3/min"}
    )
    client = client_for(world["other"])
    for _ in range(3):
        assert client.get("/api/strategies/").status_code == 200
    assert_error(client.get("/api/strategies/"), 429, "throttled")


def test_the_openapi_schema_is_valid_and_served_to_signed_in_users(world):
    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    assert "/api/bots/{id}/start/" in schema["paths"]
    # The docs page lists every endpoint: each URL pattern under /api/ is in the schema (but
    # the schema and docs themselves, and the URLconf's format-suffix variants).
    documented = {re.sub(r"\{[^}]+\}", "1", path) for path in schema["paths"]}
    documented = {
        path.replace("/strategies/1/", "/strategies/sma_crossover/") for path in documented
    }
    undocumented = set(api_paths()) - documented - {"/api/", "/api/schema/", "/api/docs/"}
    assert not undocumented, f"endpoints missing from the OpenAPI schema: {sorted(undocumented)}"
    served = client_for(world["other"]).get("/api/schema/")
    assert served.status_code == 200
    docs = client_for(world["other"]).get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_backtests_are_accepted_then_read_with_their_result(world):
    instrument = world["instrument"]
    start_ms = 1_767_225_600_000  # 2026-01-01 00:00 UTC
    store_hourly_candles(instrument.pk, start_ms=start_ms, bars=24 * 20, seed=3)
    owner = client_for(world["owner"])
    request = {
        "strategy": "sma_crossover", "parameters": {"fast": 5, "slow": 20},
        "instrument": instrument.pk, "timeframe": "1h", "start": "2026-01-01T01:00:00Z",
        "end": "2026-01-20T23:00:00Z", "fee": 0.001,
    }  # fmt: skip
    accepted = owner.post("/api/backtests/", request)
    assert accepted.status_code == 202, accepted.content
    run_id = accepted.json()["id"]
    assert accepted["Location"].endswith(f"/api/backtests/{run_id}/")
    assert accepted.json()["status"] == "queued"
    assert_error(owner.get(f"/api/backtests/{run_id}/result/"), 409, "conflict")
    other = client_for(world["other"])
    assert other.get("/api/backtests/").json()["results"] == []
    assert_error(other.get(f"/api/backtests/{run_id}/"), 404, "not_found")

    backtests_services.backtest_execute(run_id)  # what the worker does
    run = owner.get(f"/api/backtests/{run_id}/").json()
    assert run["status"] == "done" and run["progress"] == 1.0 and run["data_hash"]
    result = owner.get(f"/api/backtests/{run_id}/result/").json()
    assert len(result["equity"]) == run["data_bars"] == 24 * 20 - 1
    assert len(result["trades"]) == run["trades_count"] > 0
    assert result["metrics"]["n_trades"] == run["metrics"]["n_trades"]
    assert_error(owner.post(f"/api/backtests/{run_id}/cancel/"), 409, "conflict")

    bad = owner.post("/api/backtests/", {**request, "parameters": {"fast": 20, "slow": 5}})
    assert "parameters" in assert_error(bad, 400, "invalid")["fields"]
    backwards = owner.post("/api/backtests/", {**request, "end": "2025-12-01T00:00:00Z"})
    assert "end" in assert_error(backwards, 400, "invalid")["fields"]
    queued = owner.post("/api/backtests/", request).json()
    cancelled = owner.post(f"/api/backtests/{queued['id']}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_optimizations_are_their_owners(world):
    run = OptimizationRun.objects.create(
        owner=world["owner"], strategy="sma_crossover", instrument=world["instrument"],
        timeframe="1m", start="2026-01-01T00:00Z", end="2026-01-02T00:00Z",
        space={"fast": [2, 3], "slow": [10]},
    )  # fmt: skip
    OptimizationResult.objects.create(
        run=run, parameters={"fast": 2, "slow": 10}, metrics={"sharpe": 1.0}, objective=1.0
    )
    owner = client_for(world["owner"])
    assert [r["id"] for r in owner.get("/api/optimizations/").json()["results"]] == [run.pk]
    rows = owner.get(f"/api/optimizations/{run.pk}/results/").json()["results"]
    assert rows[0]["parameters"] == {"fast": 2, "slow": 10}
    other = client_for(world["other"])
    assert_error(other.get(f"/api/optimizations/{run.pk}/"), 404, "not_found")
    assert_error(other.get(f"/api/optimizations/{run.pk}/results/"), 404, "not_found")
    assert_error(other.post(f"/api/optimizations/{run.pk}/cancel/"), 404, "not_found")
    assert owner.post(f"/api/optimizations/{run.pk}/cancel/").json()["status"] == "cancelled"
