"""Releasing the kill switch from the API (``DELETE /api/kill-switch/``) and the pages (the
"Release kill switch" button where the engaged switch is shown): a user releases only their
own, 409 when it was not engaged, audited like the engage (a ``kill_switch_released`` row per
bot with the actor, ``kill_switch.released`` on ``system_events``), and the bots start again
only after the release. Staff release a user's switch in the admin, recorded with their name."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from bots.models import Bot, BotEvent, RiskBudget
from tests.bots.support import instrument_with_exchange, make_bot
from tests.factories import StaffUserFactory, UserFactory
from tests.support import eventually

URL = "/api/kill-switch/"
RELEASE_PAGE = "/bots/kill-switch/release/"


@pytest.fixture
def world(db):
    owner, other = UserFactory(password=None), UserFactory(password=None)
    instrument = instrument_with_exchange("ETH/USDT")
    bots = [make_bot(owner, instrument, name=name) for name in ("a", "b")]
    theirs = make_bot(other, instrument, name="theirs")
    return {"owner": owner, "other": other, "bots": bots, "theirs": theirs}


def api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def engaged(user) -> bool:
    return RiskBudget.objects.filter(owner=user, kill_switch_at__isnull=False).exists()


def released_rows(user) -> list[BotEvent]:
    return list(BotEvent.objects.filter(bot__owner=user, kind="kill_switch_released"))


@pytest.mark.django_db(transaction=True)
def test_api_release_answers_the_state_audits_and_lets_bots_start_again(world, redis_server):
    from tradeapp.redis_client import get_redis

    owner, (bot, second) = world["owner"], world["bots"]
    client = api(owner)
    assert client.post(f"/api/bots/{bot.pk}/start/").status_code == 200
    pubsub = get_redis().pubsub()
    pubsub.subscribe("system_events")
    eventually(lambda: pubsub.get_message(timeout=0.1) is not None, message="subscribed")

    assert client.post(URL).json() == {"bots_stopped": 1, "orders_cancelled": 0}
    state = client.get(URL).json()
    assert state["engaged"] is True and state["engaged_at"]
    # Not before the release: starting is refused.
    refused = client.post(f"/api/bots/{second.pk}/start/")
    assert refused.status_code == 400 and "kill switch" in refused.json()["error"]["message"]

    response = client.delete(URL)
    assert response.status_code == 200
    assert response.json() == {"engaged": False, "engaged_at": None}
    assert not engaged(owner)
    # Audited on each of the owner's bots, with the owner as actor, as the engage was.
    rows = released_rows(owner)
    assert sorted(row.bot_id for row in rows) == [bot.pk, second.pk]
    assert {row.actor_id for row in rows} == {owner.pk}
    assert all(row.data["engaged_at"] == state["engaged_at"].replace("Z", "+00:00") for row in rows)
    assert not released_rows(world["other"])
    seen: list[dict] = []

    def released_event() -> bool:
        while (message := pubsub.get_message(timeout=0.1)) is not None:
            if message["type"] == "message":
                seen.append(json.loads(message["data"]))
        return any(event["type"] == "kill_switch.released" for event in seen)

    eventually(released_event, timeout=10, message="kill_switch.released is published")
    pubsub.close()
    event = next(event for event in seen if event["type"] == "kill_switch.released")
    assert (event["owner_id"], event["actor"]) == (owner.pk, owner.username)

    # The owner and staff see the audit rows; another user does not.
    mine = client.get("/api/system-events/", {"kind": "kill_switch_released"}).json()["results"]
    assert {(e["type"], e["actor"], e["bot"]) for e in mine} == {
        ("bot.kill_switch_released", owner.username, bot.pk),
        ("bot.kill_switch_released", owner.username, second.pk),
    }
    staff = api(StaffUserFactory(password=None))
    everyone = staff.get("/api/events/", {"kind": "kill_switch_released"}).json()["results"]
    assert len(everyone) == 2
    other = api(world["other"]).get("/api/events/", {"kind": "kill_switch_released"})
    assert other.json()["results"] == []

    # After the release: the bots start again (none started by itself).
    assert Bot.objects.get(pk=second.pk).status == Bot.Status.STOPPED
    assert client.post(f"/api/bots/{second.pk}/start/").json()["status"] == "running"


def test_api_release_when_not_engaged_is_a_conflict(world):
    client = api(world["owner"])
    response = client.delete(URL)
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (409, "conflict")
    assert "not engaged" in error["message"]
    assert client.get(URL).json() == {"engaged": False, "engaged_at": None}
    # Released once: a second release is a conflict too, with no second audit row.
    client.post(URL)
    assert client.delete(URL).status_code == 200
    assert client.delete(URL).status_code == 409
    assert len(released_rows(world["owner"])) == 2  # one per bot, once


def test_another_user_cannot_release_someone_elses_kill_switch(world):
    owner, other = world["owner"], world["other"]
    assert api(owner).post(URL).status_code == 200
    # The API and the page act on the signed-in user's own switch: naming the owner changes
    # nothing.
    assert api(other).delete(URL, {"owner": owner.pk, "user": owner.pk}).status_code == 409
    response = page(other).post(RELEASE_PAGE, {"owner": owner.pk}, follow=True)
    assert "Your kill switch was not engaged." in response.content.decode()
    assert engaged(owner)
    assert not released_rows(owner)
    starting = api(owner).post(f"/api/bots/{world['bots'][0].pk}/start/")
    assert starting.status_code == 400


def test_page_shows_the_engaged_switch_and_releases_it(world):
    owner, bot = world["owner"], world["bots"][0]
    client = page(owner)
    assert 'id="kill-switch"' not in client.get("/").content.decode()
    api(owner).post(URL)
    for path in ("/", "/bots/", f"/bots/{bot.pk}/"):
        html = client.get(path).content.decode()
        assert 'id="kill-switch-release-form"' in html, path
        assert f'action="{RELEASE_PAGE}"' in html and "csrfmiddlewaretoken" in html, path
    # Another user's page does not show the owner's switch.
    assert 'id="kill-switch"' not in page(world["other"]).get("/").content.decode()
    # Not before the release: the page's start is refused with the reason.
    html = client.post(f"/bots/{bot.pk}/start/", follow=True).content.decode()
    assert "kill switch" in html and Bot.objects.get(pk=bot.pk).status == "stopped"

    response = client.post(RELEASE_PAGE, {"next": f"/bots/{bot.pk}/"})
    assert response.status_code == 302 and response["Location"] == f"/bots/{bot.pk}/"
    html = client.get(response["Location"]).content.decode()
    assert "Kill switch released: your bots may be started again" in html
    assert 'id="kill-switch"' not in html
    assert not engaged(owner)
    assert {row.actor_id for row in released_rows(owner)} == {owner.pk}
    assert len(released_rows(owner)) == 2
    client.post(f"/bots/{bot.pk}/start/")
    assert Bot.objects.get(pk=bot.pk).status == "running"


def test_page_release_needs_post_and_never_redirects_off_site(world):
    owner = world["owner"]
    client = page(owner)
    api(owner).post(URL)
    assert client.get(RELEASE_PAGE).status_code == 405
    assert engaged(owner)
    response = client.post(RELEASE_PAGE, {"next": "https://evil.example.net/"})
    assert response["Location"] == "/"
    assert not engaged(owner)
    # Signed out: the sign-in page, nothing released.
    api(owner).post(URL)
    assert Client().post(RELEASE_PAGE)["Location"].startswith("/accounts/login/")
    assert engaged(owner)


def test_pages_release_enforces_csrf(world):
    owner = world["owner"]
    api(owner).post(URL)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(RELEASE_PAGE).status_code == 403
    assert engaged(owner)


def test_staff_release_in_the_admin_is_recorded_with_the_staff_member(world):
    owner = world["owner"]
    api(owner).post(URL)
    admin = UserFactory(password=None, is_staff=True, is_superuser=True)
    budget = RiskBudget.objects.get(owner=owner)
    response = page(admin).post(
        "/admin/bots/riskbudget/",
        {"action": "release_kill_switch", "_selected_action": [budget.pk]},
    )
    assert response.status_code == 302
    assert not engaged(owner)
    rows = released_rows(owner)
    assert len(rows) == 2 and {row.actor_id for row in rows} == {admin.pk}
