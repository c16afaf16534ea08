"""Schemathesis against the OpenAPI schema the API serves: every operation, signed in (a token of
a user who owns a bot with decisions, an exchange account, a finished backtest, an optimisation
with results) and signed out, in process through the Django WSGI application on the test
database.

Signed in: no 5xx ever, and every response conforms to the schema (its status code is
documented, its body and content type are the documented ones). Signed out: every call is
refused with 401 in the error shape, never data. Bounded and reproducible: a few derandomised
Hypothesis examples per operation (``EXAMPLES``); a fresh world per operation (each test runs
in its own rolled-back transaction), so a DELETE of the fixture's bot only affects the examples
of that operation.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from rest_framework import throttling
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.schema import ApiSchemaGenerator
from backtests import services as backtests_services
from backtests.models import BacktestRun, OptimizationResult, OptimizationRun
from bots.manager import BotManager
from bots.models import Bot, ExchangeAccount
from marketdata.models import Candle, Exchange
from tests.backtests.support import store_hourly_candles
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import UserFactory
from tradeapp.wsgi import application

#: Examples per operation: signed in, and signed out.
EXAMPLES = 10
ANONYMOUS_EXAMPLES = 2

# HTTPS, as behind the TLS proxy of a deployment: the production profile's application (built
# once, at import) redirects plain HTTP.
BASE_URL = "https://localhost"
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC


# The schema /api/schema/ serves (its generator runs without a database: no view reads rows).
schema = schemathesis.openapi.from_dict(ApiSchemaGenerator().get_schema(request=None, public=True))
schema.app = application


@pytest.fixture
def in_process(db) -> Iterator[None]:
    """The WSGI application on the test's own connection, as Django's test client runs it: no
    closing of "old" connections at each request's start and end (that would close the test's
    transaction)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture(scope="module")
def stored_world(django_db_setup, django_db_blocker) -> Iterator[dict[str, Any]]:
    """A user owning one of everything, committed once for the module (building it per
    operation would cost a second each); every test's changes to it are rolled back with the
    test's transaction, and it is deleted at the end."""
    with django_db_blocker.unblock():
        exchanges_before = set(Exchange.objects.values_list("pk", flat=True))
        owner = UserFactory(password=None)
        token = Token.objects.create(user=owner)
        instrument = instrument_with_exchange("ETH/USDT")
        data = walk(60, seed=5)
        store(instrument, data, slice(0, 20))
        bot = make_bot(owner, instrument, parameters={"fast": 2, "slow": 5})
        manager = BotManager()
        manager.start_bot(bot.pk)
        for close_ms in store(instrument, data, slice(20, 60)):
            manager.process_candle(instrument.pk, "1m", close_ms)
        manager.stop_bot(bot.pk)
        exchange, _ = Exchange.objects.get_or_create(
            ccxt_id="binance", defaults={"name": "Binance"}
        )
        account = ExchangeAccount(owner=owner, exchange=exchange, label="main")
        account.set_credentials(api_key="KEY", api_secret="SECRET")
        account.save()
        store_hourly_candles(instrument.pk, start_ms=START_MS, bars=120, seed=3)
        run = backtests_services.backtest_create(
            user=owner, strategy="sma_crossover", parameters={"fast": 3, "slow": 10},
            instrument=instrument, timeframe="1h", start="2026-01-01T01:00:00Z",
            end="2026-01-05T23:00:00Z", enqueue=False,
        )  # fmt: skip
        backtests_services.backtest_execute(run.pk)
        optimization = OptimizationRun.objects.create(
            owner=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
            start="2026-01-01T00:00Z", end="2026-01-05T00:00Z",
            space={"fast": [2, 3], "slow": [10]},
        )  # fmt: skip
        OptimizationResult.objects.create(
            run=optimization, parameters={"fast": 2, "slow": 10}, metrics={"sharpe": 1.0},
            objective=1.0,
        )  # fmt: skip
    try:
        yield {
            "token": token.key,
            "ids": {
                "bots": bot.pk,
                "accounts": account.pk,
                "backtests": run.pk,
                "optimizations": optimization.pk,
                "exchanges": exchange.pk,
                "instruments": instrument.pk,
                "strategies": "sma_crossover",
            },
        }
    finally:
        with django_db_blocker.unblock():
            Bot.objects.filter(owner=owner).delete()
            BacktestRun.objects.filter(owner=owner).delete()
            OptimizationRun.objects.filter(owner=owner).delete()
            owner.delete()
            Candle.objects.filter(instrument=instrument).delete()
            instrument.delete()
            Exchange.objects.exclude(pk__in=exchanges_before).delete()


@pytest.fixture
def world(in_process, stored_world, monkeypatch) -> dict[str, Any]:
    """The stored world, in a test whose changes are rolled back; no throttling."""
    cache.clear()
    monkeypatch.setattr(
        throttling.UserRateThrottle, "THROTTLE_RATES", {"user": "100000/min", "anon": "100000/min"}
    )
    return stored_world


def _aim_at_real_rows(case: Any, ids: dict[str, Any]) -> None:
    """Half the generated path ids become the world's own objects' (a deterministic choice)."""
    parameters = case.path_parameters or {}
    resource = case.path.split("/")[2]
    for name, value in parameters.items():
        if resource in ids and zlib.crc32(repr(value).encode()) % 2 == 0:
            parameters[name] = ids[resource]


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "phases": [Phase.generate],
    "suppress_health_check": list(HealthCheck),
}


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, **SETTINGS)
def test_api_signed_in_never_fails_and_keeps_to_its_schema(case, world):
    _aim_at_real_rows(case, world["ids"])
    response = case.call(BASE_URL, headers={"Authorization": f"Token {world['token']}"})
    case.validate_response(response, checks=CHECKS)


@schema.include(method=["POST", "PUT", "PATCH"]).parametrize()
@hypothesis_settings(max_examples=1, **{**SETTINGS, "phases": [Phase.explicit]})
def test_api_writes_refuse_boundary_and_malformed_bodies(case, world):
    """Schemathesis's coverage cases for every write: each field at and beyond its bounds,
    missing, of the wrong type, and bodies of the wrong shape (deterministic, a few dozen per
    operation): answered as documented, never a 5xx."""
    _aim_at_real_rows(case, world["ids"])
    response = case.call(BASE_URL, headers={"Authorization": f"Token {world['token']}"})
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@hypothesis_settings(max_examples=ANONYMOUS_EXAMPLES, **SETTINGS)
def test_api_signed_out_is_refused(case, world):
    _aim_at_real_rows(case, world["ids"])
    response = case.call(BASE_URL)
    if case.path == "/api/token/":
        assert response.status_code < 500
        return
    assert response.status_code == 401, (case.method, case.formatted_path, response.text)
    error = response.json()["error"]
    assert error["code"] == "not_authenticated" and error["status"] == 401
