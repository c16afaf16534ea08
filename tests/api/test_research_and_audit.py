"""The API's newer resources: optimisations created through the API (202, the service's checks
as field errors, nothing stored on refusal), raw and rejected ticks (shared market data, cursor
pages oldest first on the models' indexes) and the system event log (own bots; staff all)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from backtests.models import OptimizationRun
from bots.manager import BotManager
from bots.models import BotEvent
from marketdata import selectors as market_selectors
from marketdata.models import RawTick, RejectedTick
from tests.api.test_api import assert_error, client_for
from tests.bots.support import instrument_with_exchange, make_bot
from tests.factories import StaffUserFactory, UserFactory

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def people(db, settings):
    # Nobody signs in with a password here: a fast hasher keeps the set-up cheap.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return {"owner": UserFactory(), "other": UserFactory(), "staff": StaffUserFactory()}


@pytest.fixture
def instrument(db):
    return instrument_with_exchange("ETH/USDT")


# --- optimisations --------------------------------------------------------------------------


def optimisation(market, **overrides) -> dict:
    return {
        "strategy": "sma_crossover", "instrument": market.pk, "timeframe": "1h",
        "start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z", "method": "grid",
        "space": {"fast": [5, 10, 15], "slow": [20, 40]}, "objective": "sharpe",
    } | overrides  # fmt: skip


def test_an_optimisation_is_accepted_queued_and_its_owners(people, instrument):
    owner = client_for(people["owner"])
    accepted = owner.post("/api/optimizations/", optimisation(instrument, fee=0.002))
    assert accepted.status_code == 202, accepted.content
    body = accepted.json()
    assert accepted["Location"].endswith(f"/api/optimizations/{body['id']}/")
    assert body["status"] == "queued" and body["combinations"] == 6 and body["fee"] == 0.002
    run = OptimizationRun.objects.get(pk=body["id"])
    assert run.owner == people["owner"] and run.space == {"fast": [5, 10, 15], "slow": [20, 40]}
    assert owner.get(accepted["Location"]).json()["method"] == "grid"
    other = client_for(people["other"])
    assert other.get("/api/optimizations/").json()["results"] == []
    assert_error(other.get(f"/api/optimizations/{run.pk}/"), 404, "not_found")
    staff = client_for(people["staff"]).get("/api/optimizations/").json()["results"]
    assert [row["id"] for row in staff] == [run.pk]
    # Random search and walk-forward take their own settings.
    random = owner.post(
        "/api/optimizations/",
        optimisation(instrument, method="random", space={}, n_iter=7, seed=3),
    )
    # Seven draws; those breaking fast < slow are left out.
    assert random.status_code == 202 and 0 < random.json()["combinations"] <= 7
    walk = owner.post(
        "/api/optimizations/",
        optimisation(instrument, method="walk_forward", train_bars=200, test_bars=50),
    )
    assert walk.status_code == 202 and walk.json()["train_bars"] == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"space": {"fast": [5], "nope": [1]}}, "space"),
        ({"space": {"fast": ["ten"]}}, "space"),
        ({"space": {"fast": [0, 5]}}, "space"),  # below the parameter's minimum
        ({"space": {"fast": [30, 40], "slow": [10, 20]}}, "space"),  # no combination fast < slow
        ({"space": {"fast": list(range(1, 501)), "slow": list(range(2, 1002))}}, "space"),
        ({"space": [5, 10]}, "space"),
        ({"strategy": "no_such_strategy"}, "strategy"),
        ({"objective": "luck"}, "objective"),
        ({"method": "annealing"}, "method"),
        ({"end": "2025-12-01T00:00:00Z"}, "end"),
        ({"method": "walk_forward", "test_bars": 50}, "train_bars"),
        ({"method": "random", "n_iter": 0}, "n_iter"),
        ({"fee": -0.5}, "fee"),
        ({"instrument": 999_999}, "instrument"),
        ({"timeframe": "7m"}, "timeframe"),
    ],
)
def test_bad_optimisations_get_field_errors_and_store_nothing(people, instrument, overrides, field):
    response = client_for(people["owner"]).post(
        "/api/optimizations/", optimisation(instrument, **overrides)
    )
    error = assert_error(response, 400, "invalid")
    assert field in error["fields"], error
    assert not OptimizationRun.objects.exists()


# --- the fee taken in the coin bought -------------------------------------------------------


def test_fee_in_base_is_accepted_stored_returned_and_simulated(people, instrument):
    """``fee_in_base`` is a run setting of the API: off unless given, stored, read back, and the
    run is simulated with it (its result differs from the fee paid in quote)."""
    from backtests import services as backtests_services
    from backtests.models import BacktestRun
    from tests.backtests.support import store_hourly_candles

    store_hourly_candles(instrument.pk, start_ms=1_767_225_600_000, bars=24 * 12, seed=3)
    owner = client_for(people["owner"])
    request = {
        "strategy": "sma_crossover", "parameters": {"fast": 3, "slow": 8},
        "instrument": instrument.pk, "timeframe": "1h", "start": "2026-01-01T01:00:00Z",
        "end": "2026-01-12T23:00:00Z", "fee": 0.004,
    }  # fmt: skip
    runs = {}
    for flag in (None, False, True):
        body = request if flag is None else {**request, "fee_in_base": flag}
        accepted = owner.post("/api/backtests/", body, format="json")
        assert accepted.status_code == 202, accepted.content
        assert accepted.json()["fee_in_base"] is bool(flag)
        runs[flag] = accepted.json()["id"]
    stored = BacktestRun.objects.get(pk=runs[True])
    assert stored.fee_in_base is True and stored.engine_options()["fee_in_base"] is True
    assert BacktestRun.objects.get(pk=runs[None]).fee_in_base is False
    assert owner.get(f"/api/backtests/{runs[True]}/").json()["fee_in_base"] is True
    rows = owner.get("/api/backtests/").json()["results"]
    listed = {row["id"]: row["fee_in_base"] for row in rows}
    assert listed == {runs[None]: False, runs[False]: False, runs[True]: True}

    for run_id in runs.values():
        backtests_services.backtest_execute(run_id)
    finals = {
        flag: owner.get(f"/api/backtests/{run_id}/").json()["metrics"]["final_equity"]
        for flag, run_id in runs.items()
    }
    trades = owner.get(f"/api/backtests/{runs[True]}/").json()["trades_count"]
    assert trades > 0
    assert finals[None] == finals[False] != finals[True]

    search = owner.post(
        "/api/optimizations/", optimisation(instrument, fee_in_base=True), format="json"
    )
    assert search.status_code == 202, search.content
    assert search.json()["fee_in_base"] is True
    assert OptimizationRun.objects.get(pk=search.json()["id"]).engine_options()["fee_in_base"]
    refused = owner.post(
        "/api/optimizations/", optimisation(instrument, fee_in_base="sometimes"), format="json"
    )
    assert "fee_in_base" in assert_error(refused, 400, "invalid")["fields"]


# --- raw and rejected ticks -----------------------------------------------------------------


def store_ticks(instrument, count: int, *, first_id: int = 0) -> None:
    """``count`` ticks, two per millisecond, stored in shuffled order (ids are not time order)."""
    order = list(range(count))[::-1]
    RawTick.objects.bulk_create(
        RawTick(
            instrument=instrument, trade_id=str(first_id + i),
            time=T0 + timedelta(milliseconds=i // 2), price="100.5", amount="0.25", side="buy",
            received_at=T0 + timedelta(seconds=1),
        )
        for i in order
    )  # fmt: skip


def test_raw_ticks_are_cursor_pages_oldest_first_for_any_signed_in_user(people, instrument):
    other_market = instrument_with_exchange("BTC/USDT")
    store_ticks(instrument, 31)
    store_ticks(other_market, 5, first_id=1000)
    client = client_for(people["other"])  # market data is everyone's
    path = f"/api/ticks/?instrument={instrument.pk}&page_size=4"
    seen = []
    while path:
        page = client.get(path)
        assert page.status_code == 200, page.content
        seen += page.json()["results"]
        path = page.json()["next"]
    assert len(seen) == 31 and {row["instrument"] for row in seen} == {instrument.pk}
    keys = [(datetime.fromisoformat(row["time"]), row["id"]) for row in seen]
    assert keys == sorted(keys) and len(set(keys)) == 31  # ties of one ms kept in id order
    # Trade i at millisecond i // 2; stored last-first, so "1" precedes "0" within the first ms.
    assert [row["trade_id"] for row in seen[:4]] == ["1", "0", "3", "2"]
    assert seen[0]["price"].startswith("100.5") and seen[0]["side"] == "buy"

    since, until = "2026-01-01T00:00:00.005Z", "2026-01-01T00:00:00.008Z"
    window = client.get(f"/api/ticks/?instrument={instrument.pk}&since={since}&until={until}")
    rows = window.json()["results"]
    assert sorted(int(row["trade_id"]) for row in rows) == list(range(10, 18))

    assert "instrument" in assert_error(client.get("/api/ticks/"), 400, "invalid")["fields"]
    assert_error(client.get("/api/ticks/?instrument=x"), 400, "invalid")
    assert_error(client.get("/api/ticks/?instrument=999999"), 404, "not_found")


def test_a_page_of_ticks_is_a_range_of_the_instrument_time_index(instrument):
    rows = market_selectors.raw_ticks_between(instrument_id=instrument.pk, since=T0)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # a tiny table would be scanned: ask for the index
            cursor.execute("SET LOCAL enable_seqscan = off")
    plan = rows[:100].explain()
    assert "rawtick_instrument_time" in plan, plan


def test_rejected_ticks_by_instrument_or_of_no_instrument(people, instrument):
    def reject(instrument_, symbol: str, seconds: int, reason: str) -> RejectedTick:
        return RejectedTick.objects.create(
            exchange="simulated", symbol=symbol, instrument=instrument_, payload={"p": seconds},
            reason=reason, received_at=T0 + timedelta(seconds=seconds),
        )  # fmt: skip

    later = reject(instrument, "ETH/USDT", 9, "price is not positive")
    earlier = reject(instrument, "ETH/USDT", 2, "amount is not a number")
    unknown = reject(None, "DOGE/EUR", 5, "unknown symbol 'DOGE/EUR'")
    client = client_for(people["other"])
    rows = client.get(f"/api/rejects/?instrument={instrument.pk}").json()["results"]
    assert [row["id"] for row in rows] == [earlier.pk, later.pk]
    assert rows[0]["payload"] == {"p": 2} and rows[0]["reason"] == "amount is not a number"
    orphans = client.get("/api/rejects/?instrument=none").json()["results"]
    assert [row["id"] for row in orphans] == [unknown.pk] and orphans[0]["instrument"] is None
    late = client.get(f"/api/rejects/?instrument={instrument.pk}&since=2026-01-01T00:00:05Z")
    assert [row["id"] for row in late.json()["results"]] == [later.pk]
    assert client.get("/api/rejects/?instrument=none&symbol=BTC/USDT").json()["results"] == []
    assert "instrument" in assert_error(client.get("/api/rejects/"), 400, "invalid")["fields"]
    assert_error(client.get("/api/rejects/?instrument=999999"), 404, "not_found")


# --- system events --------------------------------------------------------------------------


def test_system_events_are_the_users_own_and_all_for_staff(people, instrument):
    mine = make_bot(people["owner"], instrument, name="mine")
    theirs = make_bot(people["other"], instrument, name="theirs")
    manager = BotManager()
    manager.start_bot(mine.pk, actor=people["owner"])
    manager.stop_bot(mine.pk, actor=people["staff"])
    manager.start_bot(theirs.pk, actor=people["other"])

    owner = client_for(people["owner"]).get("/api/system-events/").json()["results"]
    assert [(e["type"], e["bot_name"]) for e in owner] == [
        ("bot.stopped", "mine"), ("bot.started", "mine"), ("bot.created", "mine"),
    ]  # fmt: skip
    assert owner[0]["actor"] == people["staff"].username
    assert owner[0]["owner"] == people["owner"].username
    assert owner[0]["data"] == {"from": "running", "to": "stopped"}

    staff = client_for(people["staff"])
    every = staff.get("/api/system-events/").json()["results"]
    assert {e["bot_name"] for e in every} == {"mine", "theirs"} and len(every) == 5
    starts = staff.get("/api/system-events/?kind=started&kind=stopped").json()["results"]
    assert sorted(e["type"] for e in starts) == ["bot.started", "bot.started", "bot.stopped"]
    by_owner = staff.get(f"/api/system-events/?owner={people['other'].pk}").json()["results"]
    assert {e["bot_name"] for e in by_owner} == {"theirs"}
    assert_error(staff.get("/api/system-events/?kind=exploded"), 400, "invalid")
    assert_error(staff.get("/api/system-events/?owner=me"), 400, "invalid")

    other = client_for(people["other"])
    # A non-staff user's owner filter cannot widen the scope.
    widened = other.get(f"/api/system-events/?owner={people['owner'].pk}").json()["results"]
    assert {e["bot_name"] for e in widened} == {"theirs"}
    event = BotEvent.objects.filter(bot=mine).first()
    assert_error(other.get(f"/api/system-events/{event.pk}/"), 404, "not_found")
    assert client_for(people["owner"]).get(f"/api/system-events/{event.pk}/").status_code == 200
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert staff.get(f"/api/system-events/?since={future}").json()["results"] == []
