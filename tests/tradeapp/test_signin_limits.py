"""Password guessing is limited on every sign-in path: the sign-in page, the admin's and
``POST /api/token/`` (django-axes, settings "Sign-in limits"; ``tradeapp.receivers``,
``api.auth``).

Through the real views (Django's test client, and the ASGI application for the async path of
axes' middleware): after ``AXES_FAILURE_LIMIT`` failures for a username (from any addresses) or
from an address (for any usernames) every attempt there is refused with 429, even with the right
password, and a made-up username gets the very same answers; the lockout ends after the
cool-off or when staff delete the attempts in the admin; failures and lockouts are events on
``system_events`` that never hold the password; the token view is also throttled.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from axes.exceptions import AxesBackendRequestParameterRequired
from axes.models import AccessAttempt, AccessFailureLog
from django.conf import settings
from django.core.cache import cache
from django.db.models import F
from django.http import HttpResponse
from django.test import Client

from tests.factories import DEFAULT_PASSWORD, StaffUserFactory, UserFactory
from tests.support import eventually
from tests.tradeapp.test_settings import refusal
from tradeapp.asgi import application

WRONG = "wrong-Pa55word-4c1e"
ATTACKER = "203.0.113.7"
HOME = "198.51.100.20"


@pytest.fixture(autouse=True)
def _fast_and_fresh(settings):
    # Many password checks here: a fast hasher; and no throttle state from an earlier test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def alice(db):
    """Staff, so that the admin's sign-in accepts her too."""
    return StaffUserFactory(username="alice")


@pytest.fixture
def bob(db):
    return StaffUserFactory(username="bob")


@dataclass(frozen=True)
class SignInPath:
    name: str
    attempt: Callable[[Client, str, str, str], HttpResponse]
    accepted: Callable[[HttpResponse], bool]
    refused: Callable[[HttpResponse], bool]  # the ordinary answer to a wrong password


def _page(url: str) -> Callable[[Client, str, str, str], HttpResponse]:
    def attempt(client: Client, username: str, password: str, ip: str) -> HttpResponse:
        return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)

    return attempt


def _token(client: Client, username: str, password: str, ip: str) -> HttpResponse:
    body = {"username": username, "password": password}
    return client.post("/api/token/", body, content_type="application/json", REMOTE_ADDR=ip)


PATHS = {
    "page": SignInPath(
        "page",
        _page("/accounts/login/"),
        lambda r: r.status_code == 302 and r["Location"] == "/",
        lambda r: r.status_code == 200 and b"Please enter a correct username" in r.content,
    ),
    "admin": SignInPath(
        "admin",
        _page("/admin/login/?next=/admin/"),
        lambda r: r.status_code == 302 and r["Location"] == "/admin/",
        lambda r: r.status_code == 200 and b"Please enter the correct username" in r.content,
    ),
    "token": SignInPath(
        "token",
        _token,
        lambda r: r.status_code == 200 and "token" in r.json(),
        lambda r: r.status_code == 400 and r.json()["error"]["code"] == "invalid",
    ),
}


def assert_locked_out(response: HttpResponse) -> None:
    """The locked-out answer: 429 with Retry-After (the cool-off), the page or the API's shape,
    never naming the username."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    assert response.status_code == 429, response.content[:300]
    assert response["Retry-After"] == str(seconds)
    if response["Content-Type"].startswith("application/json"):
        error = response.json()["error"]
        assert error["status"] == 429 and error["code"] == "locked_out"
        assert "paused" in error["message"] and f"{seconds} seconds" in error["message"]
        assert set(error) == {"status", "code", "message"}
    else:
        assert "registration/locked_out.html" in [t.name for t in response.templates]
        text = response.content.decode()
        assert "Sign-in paused" in text and f"paused for {seconds // 60} minutes" in text
    assert b"alice" not in response.content


def guess_until_locked(path: SignInPath, usernames_and_ips: list[tuple[str, str]]) -> int:
    """Wrong passwords, one per (username, address), until one is answered 429; the number of
    ordinary refusals before it. Every one of them must be the ordinary wrong-password answer."""
    for done, (username, ip) in enumerate(usernames_and_ips):
        response = path.attempt(Client(), username, WRONG, ip)
        if response.status_code == 429:
            assert_locked_out(response)
            return done
        assert path.refused(response), (path.name, done, response.status_code)
    raise AssertionError(f"{path.name}: {len(usernames_and_ips)} wrong passwords, no lockout")


# --- the limits -------------------------------------------------------------------------------


def test_the_limits_are_the_documented_defaults():
    # The suite runs with the defaults (README's variables table).
    assert settings.AXES_FAILURE_LIMIT == 5
    assert settings.AXES_COOLOFF_TIME == timedelta(minutes=15)
    assert settings.AXES_LOCKOUT_PARAMETERS == ["username", "ip_address"]
    assert settings.TRADEAPP_SIGNIN_RESET_ON_SUCCESS is True
    assert settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["token"] == "20/min"
    assert settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"
    assert settings.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TRADEAPP_SIGNIN_FAILURE_LIMIT": "0"}, "TRADEAPP_SIGNIN_FAILURE_LIMIT"),
        ({"TRADEAPP_SIGNIN_COOLOFF_MINUTES": "0"}, "TRADEAPP_SIGNIN_COOLOFF_MINUTES"),
        ({"TRADEAPP_SIGNIN_LOCKOUT_BY": "user_agent"}, "TRADEAPP_SIGNIN_LOCKOUT_BY"),
        ({"TRADEAPP_API_TOKEN_RATE": "20 per minute"}, "TRADEAPP_API_TOKEN_RATE"),
    ],
)
def test_bad_limits_are_refused_at_start_up(tmp_path, env, named):
    assert named in refusal({"TRADEAPP_VAR_DIR": str(tmp_path), **env})


@pytest.mark.parametrize("name", PATHS)
def test_wrong_passwords_lock_the_username_out_then_even_the_right_one_is_refused(name, alice, bob):
    path = PATHS[name]
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))
    limit = settings.AXES_FAILURE_LIMIT
    # The limit-th failure is already answered 429; before it, the ordinary answer.
    assert guess_until_locked(path, [("alice", ATTACKER)] * (limit + 5)) == limit - 1
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, ATTACKER))
    # Locked for the username from her own address too, and the address for other usernames...
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))
    assert_locked_out(path.attempt(Client(), "bob", DEFAULT_PASSWORD, ATTACKER))
    # ... but not the platform: another user from another address signs in.
    assert path.accepted(path.attempt(Client(), "bob", DEFAULT_PASSWORD, HOME))


@pytest.mark.parametrize("name", PATHS)
def test_a_made_up_username_gets_the_very_same_answers(name, alice):
    path = PATHS[name]
    limit = settings.AXES_FAILURE_LIMIT
    answers = {}
    for username, ip in (("alice", "192.0.2.1"), ("no-such-user-91", "192.0.2.2")):
        attempts = [path.attempt(Client(), username, WRONG, ip) for _ in range(limit + 1)]
        answers[username] = [(r.status_code, r.get("Retry-After"), r.content) for r in attempts]
        assert [r.status_code for r in attempts][-2:] == [429, 429]
        assert_locked_out(attempts[-1])
    real, made_up = answers["alice"], answers["no-such-user-91"]
    # The locked-out answers are identical, byte for byte.
    assert real[limit - 1 :] == made_up[limit - 1 :]
    if name == "token":  # the page echoes the typed username in its form: compare the API's
        assert real == made_up


@pytest.mark.parametrize("name", PATHS)
def test_one_address_guessing_many_usernames_is_locked_out(name, alice, bob):
    path = PATHS[name]
    limit = settings.AXES_FAILURE_LIMIT
    usernames = [(f"guess-{i}", ATTACKER) for i in range(limit + 5)]
    assert guess_until_locked(path, usernames) == limit - 1
    # A real account's right password from that address: refused; from elsewhere: accepted.
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, ATTACKER))
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))


@pytest.mark.parametrize("name", PATHS)
def test_one_username_guessed_from_many_addresses_is_locked_out(name, alice, bob):
    path = PATHS[name]
    limit = settings.AXES_FAILURE_LIMIT
    addresses = [("alice", f"203.0.113.{i}") for i in range(10, 10 + limit + 5)]
    assert guess_until_locked(path, addresses) == limit - 1
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, "192.0.2.99"))
    # The addresses themselves are not locked for another username.
    assert path.accepted(path.attempt(Client(), "bob", DEFAULT_PASSWORD, "203.0.113.10"))


def test_client_login_without_a_request_is_refused_loudly(alice):
    """Axes needs the request to count an attempt: Django's test ``client.login()`` (which
    calls ``authenticate()`` without one) raises instead of signing in unchecked. Tests sign in
    with ``force_login()`` or through the sign-in page."""
    with pytest.raises(AxesBackendRequestParameterRequired):
        Client().login(username="alice", password=DEFAULT_PASSWORD)


# --- the end of a lockout ---------------------------------------------------------------------


def test_the_lockout_ends_after_the_cool_off_and_a_guesser_going_on_restarts_it(alice):
    path = PATHS["page"]
    limit = settings.AXES_FAILURE_LIMIT
    cool_off = settings.AXES_COOLOFF_TIME
    assert guess_until_locked(path, [("alice", ATTACKER)] * limit) == limit - 1

    def time_passes(delta: timedelta) -> None:  # as axes measures it: the attempts' times
        AccessAttempt.objects.update(attempt_time=F("attempt_time") - delta)

    time_passes(cool_off - timedelta(minutes=1))
    # The guesser goes on: its attempt, refused, counts from now again.
    assert_locked_out(path.attempt(Client(), "alice", WRONG, ATTACKER))
    time_passes(cool_off - timedelta(minutes=1))
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))
    time_passes(cool_off + timedelta(seconds=1))
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, ATTACKER))


@pytest.fixture
def admin_client(db):
    client = Client()
    client.force_login(StaffUserFactory(username="root", is_superuser=True))
    return client


def test_staff_see_the_attempts_and_unlock_by_deleting_them_in_the_admin(alice, admin_client):
    path = PATHS["token"]
    limit = settings.AXES_FAILURE_LIMIT
    assert guess_until_locked(path, [("alice", ATTACKER)] * limit) == limit - 1
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))

    listing = admin_client.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    rows = list(AccessAttempt.objects.order_by("pk"))
    assert {(r.username, r.ip_address) for r in rows} == {("alice", ATTACKER), ("alice", HOME)}
    for row in rows:
        assert f"/admin/axes/accessattempt/{row.pk}/change/" in listing.content.decode()
    assert ATTACKER in listing.content.decode() and "Locked Out" in listing.content.decode()
    failures = admin_client.get("/admin/axes/accessfailurelog/")
    assert failures.status_code == 200
    assert AccessFailureLog.objects.filter(username="alice").count() == limit + 1

    # Django's "delete selected" action, confirmed, as staff press it.
    confirm = admin_client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [r.pk for r in rows]},
    )
    assert confirm.status_code == 200 and b"Are you sure" in confirm.content
    done = admin_client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [r.pk for r in rows], "post": "yes"},
    )
    assert done.status_code == 302 and not AccessAttempt.objects.exists()
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))
    assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, ATTACKER))


def test_a_non_staff_user_cannot_see_the_attempts(alice):
    PATHS["page"].attempt(Client(), "alice", WRONG, ATTACKER)
    client = Client()
    client.force_login(UserFactory(username="carol"))
    for url in ("/admin/axes/accessattempt/", "/admin/axes/accessfailurelog/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    # Staff without the axes permissions do not either.
    client.force_login(StaffUserFactory(username="dave"))
    assert client.get("/admin/axes/accessattempt/").status_code == 403


# --- the reset on success ---------------------------------------------------------------------


def test_a_user_own_typos_are_forgotten_when_she_signs_in(alice):
    path = PATHS["page"]
    limit = settings.AXES_FAILURE_LIMIT
    for _round in range(3):
        for _ in range(limit - 1):
            assert path.refused(path.attempt(Client(), "alice", WRONG, HOME))
        assert path.accepted(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))


def test_signing_in_to_ones_own_account_does_not_wipe_guesses_at_another(alice):
    """axes' own reset on success would delete every attempt from the address: an account
    holder could then guess another's password without end (limit-1 guesses, own sign-in, ...).
    """
    path = PATHS["page"]
    limit = settings.AXES_FAILURE_LIMIT
    UserFactory(username="mallory")
    for _ in range(limit - 1):
        assert path.refused(path.attempt(Client(), "alice", WRONG, ATTACKER))
    assert path.accepted(path.attempt(Client(), "mallory", DEFAULT_PASSWORD, ATTACKER))
    assert_locked_out(path.attempt(Client(), "alice", WRONG, ATTACKER))
    assert_locked_out(path.attempt(Client(), "alice", DEFAULT_PASSWORD, HOME))


# --- the token view's throttle ----------------------------------------------------------------


def test_the_token_view_is_throttled_per_address_before_any_password_is_checked(alice):
    allowed = int(settings.TRADEAPP_API_TOKEN_RATE.split("/")[0])
    for _ in range(allowed):  # no password: refused before authenticate, counted by the throttle
        response = _token(Client(), "alice", "", ATTACKER)
        assert response.status_code == 400, response.content
    throttled = _token(Client(), "alice", DEFAULT_PASSWORD, ATTACKER)
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    error = throttled.json()["error"]
    assert error["code"] == "throttled" and error["status"] == 429
    assert not AccessAttempt.objects.exists()  # no password was checked
    assert PATHS["token"].accepted(_token(Client(), "alice", DEFAULT_PASSWORD, HOME))


# --- events, logs -----------------------------------------------------------------------------


@pytest.fixture
def system_events(redis_server):
    from tradeapp.redis_client import get_redis

    pubsub = get_redis().pubsub()
    pubsub.subscribe("system_events")
    eventually(
        lambda: (m := pubsub.get_message(timeout=0.1)) is not None and m["type"] == "subscribe",
        message="the subscription is confirmed",
    )
    yield pubsub
    pubsub.close()


def test_failures_and_lockouts_are_events_without_the_password(
    db, system_events, django_capture_on_commit_callbacks, caplog
):
    # A username of this run only: pub/sub channels are shared by every database of a Redis.
    username = f"ev-{uuid.uuid4().hex[:10]}"
    StaffUserFactory(username=username)
    caplog.set_level(logging.DEBUG)
    limit = settings.AXES_FAILURE_LIMIT
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    addresses = {"page": "192.0.2.4", "token": "192.0.2.5"}
    with django_capture_on_commit_callbacks(execute=True):
        for name, ip in addresses.items():
            for _ in range(limit):
                PATHS[name].attempt(Client(), username, WRONG, ip)
            AccessAttempt.objects.all().delete()  # the next path starts unlocked
    raw: list[str] = []
    seen: list[dict] = []

    def collect() -> bool:
        while (message := system_events.get_message(timeout=0.1)) is not None:
            if message["type"] == "message":
                raw.append(message["data"].decode())
                event = json.loads(message["data"])
                if event["type"].startswith("auth.") and event["username"] == username:
                    seen.append(event)
        kinds = [e["type"] for e in seen]
        return kinds.count("auth.failed") >= 2 * limit and kinds.count("auth.locked_out") >= 2

    eventually(collect, timeout=10, message="the sign-in events arrive")
    failed = [e for e in seen if e["type"] == "auth.failed"]
    locked = [e for e in seen if e["type"] == "auth.locked_out"]
    assert {(e["path"], e["ip"]) for e in failed} == {
        ("/accounts/login/", "192.0.2.4"), ("/api/token/", "192.0.2.5"),
    }  # fmt: skip
    assert {(e["path"], e["ip"], e["retry_after"]) for e in locked} == {
        ("/accounts/login/", "192.0.2.4", seconds), ("/api/token/", "192.0.2.5", seconds),
    }  # fmt: skip
    assert all(e["channel"] == "system_events" and e["message"] for e in seen)
    assert not any(WRONG in text for text in raw)
    # Nor in the logs (axes logs every failure).
    assert "AXES" in caplog.text and WRONG not in caplog.text


def test_the_attempt_stored_for_the_admin_masks_the_password(alice):
    PATHS["page"].attempt(Client(), "alice", WRONG, ATTACKER)
    attempt = AccessAttempt.objects.get()
    assert "password=" in attempt.post_data and WRONG not in attempt.post_data


# --- the ASGI application (axes' middleware runs async there) ---------------------------------


async def asgi_post(path: str, body: dict, ip: str) -> tuple[int, dict[bytes, bytes], bytes]:
    data = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "server": ("localhost", 443), "client": (ip, 50123),
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode())],
    }  # fmt: skip
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": data, "more_body": False})
    start = await communicator.receive_output(timeout=20)
    content = b""
    while True:
        part = await communicator.receive_output(timeout=20)
        content += part.get("body", b"")
        if not part.get("more_body"):
            break
    await communicator.wait(timeout=5)
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_through_the_asgi_application_the_token_view_locks_out_too():
    await sync_to_async(StaffUserFactory)(username="alice")
    limit = settings.AXES_FAILURE_LIMIT
    statuses = []
    for _ in range(limit):
        status, _headers, _ = await asgi_post(
            "/api/token/", {"username": "alice", "password": WRONG}, ATTACKER
        )
        statuses.append(status)
    assert statuses == [400] * (limit - 1) + [429]
    status, headers, content = await asgi_post(
        "/api/token/", {"username": "alice", "password": DEFAULT_PASSWORD}, ATTACKER
    )
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    assert status == 429 and headers[b"retry-after"] == str(seconds).encode()
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(content)["error"]["code"] == "locked_out"
    status, _headers, content = await asgi_post(
        "/api/token/", {"username": "alice", "password": DEFAULT_PASSWORD}, HOME
    )
    assert status == 429  # the username is locked from everywhere
