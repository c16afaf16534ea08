"""Hostile input to the API's writes: strategy parameters (huge, non-finite, of the wrong type,
nested, unknown, negative, very long), other fields (capital 1e308, a negative fee, reversed
dates, a timeframe that does not exist, an instrument that does not exist), search spaces of a
billion combinations, oversized and deeply nested bodies. Each is a 400 (or 413) in the API's
error shape naming the field, and nothing is stored half-way: the rows of every table a create
writes (bots, their positions and audit events, runs, results, accounts) are counted before and
after."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from backtests.models import BacktestRun, OptimizationResult, OptimizationRun
from bots.models import Bot, BotEvent, ExchangeAccount, Position, Signal
from tests.bots.support import instrument_with_exchange
from tests.factories import UserFactory

HUGE = 10**18
LONG = "x" * 100_000


@pytest.fixture
def owner(db):
    cache.clear()  # the throttles' history of earlier tests
    return UserFactory(password=None)  # no password hashing: a second per test otherwise


@pytest.fixture
def instrument(db):
    return instrument_with_exchange("ETH/USDT")


@pytest.fixture
def client(owner) -> APIClient:
    client = APIClient()
    client.force_authenticate(owner)
    return client


def stored() -> dict[str, int]:
    models = (Bot, Position, BotEvent, Signal, BacktestRun, OptimizationRun, OptimizationResult,
              ExchangeAccount)  # fmt: skip
    return {model.__name__: model.objects.count() for model in models}


def refused(response: Any, status: int = 400, code: str = "invalid") -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def post_json(client: APIClient, path: str, body: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json")


BAD_PARAMETERS = [
    {"fast": HUGE},
    {"fast": 10**400},  # an integer beyond any float
    {"fast": 1e308, "slow": 1e308},
    {"fast": -0.0},
    {"fast": -5},
    {"fast": 0},
    {"fast": 2.5},
    {"fast": "5"},
    {"fast": True},
    {"fast": None},
    {"fast": {"nested": {"deeper": [1, 2, 3]}}},
    {"fast": [5]},
    {"fast": LONG},
    {"nope": 1},
    {LONG: 1},
    {"fast": 30, "slow": 10},  # the strategy's own rule: fast < slow
    {f"key{i}": i for i in range(5000)},  # thousands of unknown names
    "fast=3",
    [3, 10],
    17,
]


@pytest.mark.parametrize("parameters", BAD_PARAMETERS, ids=range(len(BAD_PARAMETERS)))
def test_hostile_strategy_parameters_are_refused_everywhere(client, instrument, parameters):
    before = stored()
    bot = {"name": "hostile", "strategy": "sma_crossover", "instrument": instrument.pk,
           "timeframe": "1m", "parameters": parameters}  # fmt: skip
    assert "parameters" in refused(post_json(client, "/api/bots/", bot))["fields"]
    backtest = {"strategy": "sma_crossover", "instrument": instrument.pk, "timeframe": "1h",
                "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
                "parameters": parameters}  # fmt: skip
    assert "parameters" in refused(post_json(client, "/api/backtests/", backtest))["fields"]
    if isinstance(parameters, dict):  # as a search space: each value a list of values to try
        space = {name: [value] for name, value in parameters.items()}
        optimization = {**backtest, "parameters": None, "space": space}
        del optimization["parameters"]
        assert "space" in refused(post_json(client, "/api/optimizations/", optimization))["fields"]
    assert stored() == before


def test_hostile_parameters_on_update_leave_the_bot_as_it_was(client, instrument):
    created = post_json(client, "/api/bots/", {
        "name": "kept", "strategy": "sma_crossover", "instrument": instrument.pk,
        "parameters": {"fast": 3, "slow": 8},
    })  # fmt: skip
    assert created.status_code == 201, created.content
    bot_id = created.json()["id"]
    before = stored()
    for parameters in BAD_PARAMETERS:
        response = client.patch(
            f"/api/bots/{bot_id}/", data=json.dumps({"parameters": parameters}),
            content_type="application/json",
        )  # fmt: skip
        assert "parameters" in refused(response)["fields"], parameters
    bot = Bot.objects.get(pk=bot_id)
    assert bot.parameters == {"fast": 3, "slow": 8} and bot.name == "kept"
    assert stored() == before  # no audit row for a refused edit


def test_non_finite_numbers_are_not_json(client, instrument):
    before = stored()
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = (
            f'{{"name": "nan", "strategy": "sma_crossover", "instrument": {instrument.pk}, '
            f'"parameters": {{"fast": {literal}}}}}'
        )
        response = client.post("/api/bots/", data=body, content_type="application/json")
        refused(response, 400, "parse_error")
    assert stored() == before


BAD_BOT_FIELDS = [
    ({"capital": 1e308}, "capital"),
    ({"capital": "1e308"}, "capital"),
    ({"capital": "NaN"}, "capital"),
    ({"capital": "-Infinity"}, "capital"),
    ({"capital": 0}, "capital"),
    ({"fee": -1}, "fee"),
    ({"fee": 1e308}, "fee"),
    ({"slippage": -0.5}, "slippage"),
    ({"stop_loss": -1}, "stop_loss"),
    ({"max_position_fraction": 0}, "max_position_fraction"),
    ({"cooldown_candles": -1}, "cooldown_candles"),
    ({"cooldown_candles": 2**63}, "cooldown_candles"),  # beyond any integer column
    ({"timeframe": "7m"}, "timeframe"),
    ({"timeframe": LONG}, "timeframe"),
    ({"instrument": 10**12}, "instrument"),
    ({"instrument": "binance:BTC/USDT"}, "instrument"),
    ({"instrument": None}, "instrument"),
    ({"mode": "yolo"}, "mode"),
    ({"account": 10**9}, "account"),
    ({"name": LONG}, "name"),
    ({"name": {"a": 1}}, "name"),
    ({"strategy": LONG}, "strategy"),
    ({"strategy": ["sma_crossover"]}, "strategy"),
]


@pytest.mark.parametrize(("change", "field"), BAD_BOT_FIELDS, ids=[f for _, f in BAD_BOT_FIELDS])
def test_hostile_bot_fields_are_refused(client, instrument, change, field):
    before = stored()
    body = {"name": "hostile", "strategy": "sma_crossover", "instrument": instrument.pk,
            "timeframe": "1m", **change}  # fmt: skip
    assert field in refused(post_json(client, "/api/bots/", body))["fields"]
    assert stored() == before


BAD_RUN_FIELDS = [
    ({"cash": 1e308}, "cash"),
    ({"cash": -1}, "cash"),
    ({"cash": 0}, "cash"),
    ({"fee": -1}, "fee"),
    ({"fee": 1e308}, "fee"),
    ({"slippage": -1}, "slippage"),
    ({"size": 0}, "size"),
    ({"size": 1e308}, "size"),
    ({"stop_loss": -0.5}, "stop_loss"),
    ({"fill": "whenever"}, "fill"),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end"),
    ({"start": "yesterday"}, "start"),
    ({"end": "+275760-09-13T00:00:00Z"}, "end"),
    ({"timeframe": "7m"}, "timeframe"),
    ({"instrument": 10**12}, "instrument"),
    ({"instrument": "kraken"}, "instrument"),
    ({"strategy": "no_such_strategy"}, "strategy"),
    ({"fee_in_base": "maybe"}, "fee_in_base"),
    ({"fee_in_base": 2}, "fee_in_base"),
    ({"fee_in_base": {"on": True}}, "fee_in_base"),
    ({"fee_in_base": None}, "fee_in_base"),
    ({"fee_in_base": True, "allow_short": True}, "fee_in_base"),  # spot has no shorts
]


@pytest.mark.parametrize(("change", "field"), BAD_RUN_FIELDS, ids=[f for _, f in BAD_RUN_FIELDS])
def test_hostile_backtest_and_optimization_fields_are_refused(client, instrument, change, field):
    before = stored()
    run = {"strategy": "sma_crossover", "instrument": instrument.pk, "timeframe": "1h",
           "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z", **change}  # fmt: skip
    assert field in refused(post_json(client, "/api/backtests/", run))["fields"]
    search = {**run, "space": {"fast": [2, 3], "slow": [10]}}
    assert field in refused(post_json(client, "/api/optimizations/", search))["fields"]
    assert stored() == before


BAD_SEARCHES = [
    # 500 x 999 = 499,500 combinations, beyond the default per-user limit of 100,000
    # (tradeapp.limits; enumerated never); a billion random draws too.
    ({"space": {"fast": list(range(1, 501)), "slow": list(range(2, 1001))}}, "space"),
    ({"method": "random", "n_iter": 10**9}, "n_iter"),
    ({"method": "random", "n_iter": 0}, "n_iter"),
    ({"method": "random", "n_iter": -1}, "n_iter"),
    ({"method": "random", "seed": HUGE * HUGE}, "seed"),
    ({"method": "walk_forward"}, "train_bars"),
    ({"method": "walk_forward", "train_bars": 2**63, "test_bars": 10}, "train_bars"),
    ({"method": "walk_forward", "train_bars": -10, "test_bars": 10}, "train_bars"),
    ({"method": "bogus"}, "method"),
    ({"objective": "profit_please"}, "objective"),
    ({"space": {"fast": "2..500"}}, "space"),
    ({"space": {"fast": []}}, "space"),
    ({"space": {"fast": [{"a": 1}]}}, "space"),
    ({"space": {"fast": [HUGE]}}, "space"),
    ({"space": {"fast": [30], "slow": [10]}}, "space"),  # no valid combination
    ({"space": [1, 2, 3]}, "space"),
    ({"space": "everything"}, "space"),
]
#: The searches beyond the user's limits: 400 ``limit_exceeded`` (the others: ``invalid``).
OVER_LIMITS = BAD_SEARCHES[:2]


@pytest.mark.parametrize(("change", "field"), BAD_SEARCHES, ids=range(len(BAD_SEARCHES)))
def test_hostile_searches_are_refused_before_anything_is_enumerated(
    client, instrument, change, field
):
    before = stored()
    search = {"strategy": "sma_crossover", "instrument": instrument.pk, "timeframe": "1h",
              "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
              "space": {"fast": [2, 3], "slow": [10]}, **change}  # fmt: skip
    code = "limit_exceeded" if (change, field) in OVER_LIMITS else "invalid"
    assert field in refused(post_json(client, "/api/optimizations/", search), code=code)["fields"]
    assert stored() == before


# --- oversized and deeply nested bodies ---------------------------------------------------------


def test_the_body_limit_is_djangos_default():
    # 2.5 MB: what the tests below go past (the platform does not change it).
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440


@pytest.mark.parametrize("path", ["/api/bots/", "/api/backtests/", "/api/optimizations/",
                                  "/api/accounts/", "/api/token/"])  # fmt: skip
def test_a_json_body_above_the_limit_is_413_and_stores_nothing(client, instrument, path):
    before = stored()
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    body = {"name": padding, "strategy": "sma_crossover", "instrument": instrument.pk,
            "username": padding, "password": "x"}  # fmt: skip
    error = refused(post_json(client, path, body), 413, "request_too_large")
    assert "too large" in error["message"]
    assert stored() == before


def test_a_json_body_above_the_limit_without_a_length_is_413(client, instrument):
    """A chunked body (no Content-Length) is cut at the limit as it is read."""
    before = stored()
    body = json.dumps({"name": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}).encode()
    response = client.generic(
        "POST", "/api/bots/", body, content_type="application/json", CONTENT_LENGTH=""
    )
    assert response.status_code in (400, 413), response.content[:300]
    refused(response, response.status_code, response.json()["error"]["code"])
    assert stored() == before


def test_form_and_multipart_bodies_above_the_limit_are_413(client, instrument):
    before = stored()
    big = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    form = client.post(
        "/api/bots/", data=f"name={big}&strategy=sma_crossover",
        content_type="application/x-www-form-urlencoded",
    )  # fmt: skip
    refused(form, 413, "request_too_large")
    multipart = client.post("/api/bots/", data={"name": big, "strategy": "sma_crossover"},
                            format="multipart")  # fmt: skip
    refused(multipart, 413, "request_too_large")
    assert stored() == before


@pytest.mark.parametrize("depth", [50, 5_000, 1_000_000, 2_000_000])
def test_deeply_nested_json_is_a_parse_error_not_a_crash(client, instrument, depth):
    before = stored()
    nested = "[" * depth + "]" * depth
    body = (
        f'{{"name": "deep", "strategy": "sma_crossover", "instrument": {instrument.pk}, '
        f'"parameters": {nested}}}'
    )
    response = client.post("/api/bots/", data=body, content_type="application/json")
    if len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        refused(response, 413, "request_too_large")
    elif depth >= 5_000:  # deeper than Python's parser goes
        refused(response, 400, "parse_error")
    else:  # parsed: a list is not a parameter object
        assert "parameters" in refused(response)["fields"]
    assert stored() == before


def test_a_body_of_many_fields_under_the_limit_is_refused_by_name(client, instrument):
    before = stored()
    body = {"name": "wide", "strategy": "sma_crossover", "instrument": instrument.pk,
            **{f"extra{i}": i for i in range(20_000)},
            "parameters": {f"p{i}": i for i in range(20_000)}}  # fmt: skip
    error = refused(post_json(client, "/api/bots/", body))
    assert "parameters" in error["fields"]
    assert stored() == before
