"""Open WebSockets follow their session (``tradeapp.sessions``), through the real ASGI
application, the channels-redis layer and real session cookies: signing out through the logout
view closes that session's sockets with 4401, a password change (``set_password()`` and
``save()``, the admin's password form) closes every socket of the user, and the periodic
re-check closes a socket whose session row was deleted or expired, or whose password hash
changed where no signal saw it. Every other socket stays open and keeps relaying."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from tests.factories import StaffUserFactory, UserFactory
from tradeapp import events
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_SESSION_ENDED

ROUTE = "/ws/system/events"
#: A generous deadline (seconds) for what must happen at all: a close, a reply, a disconnect.
DEADLINE = 10


def signed_in(user) -> Client:
    """A browser: its own session of ``user`` (a real session row and cookie)."""
    client = Client()
    client.force_login(user)
    return client


def cookie_headers(client: Client) -> list[tuple[bytes, bytes]]:
    name = django_settings.SESSION_COOKIE_NAME
    return [
        (b"origin", b"http://localhost"),
        (b"cookie", f"{name}={client.cookies[name].value}".encode()),
    ]


async def open_socket(client: Client) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, ROUTE, headers=cookie_headers(client))
    connected, _ = await communicator.connect(timeout=DEADLINE)
    assert connected
    assert (await communicator.receive_json_from(timeout=DEADLINE))["type"] == "snapshot"
    return communicator


async def close_code(communicator: WebsocketCommunicator, *, disconnect: bool = True) -> int:
    """The code of the close the server sends (events before it are skipped), then (unless
    ``disconnect=False``) the disconnect the server would report."""
    while True:
        message = await communicator.receive_output(timeout=DEADLINE)
        if message["type"] == "websocket.close":
            if disconnect:
                await communicator.disconnect(timeout=DEADLINE)
            return message["code"]


async def still_open(*communicators: WebsocketCommunicator) -> None:
    """Each socket relays the next event (so nothing closed it before)."""
    sent = await events.apublish(events.SYSTEM_EVENT_CHANNEL, {"type": "probe", "n": time.time()})
    for communicator in communicators:
        assert await communicator.receive_json_from(timeout=DEADLINE) == sent


@pytest.fixture
def people(transactional_db, settings):
    # Hashing is not under test here: a fast hasher for the password changes.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    alice = StaffUserFactory(password=None)
    bob = StaffUserFactory(password=None)
    # Alice on two machines, Bob on one.
    return alice, signed_in(alice), signed_in(alice), bob, signed_in(bob)


@pytest.mark.asyncio
async def test_ws_sign_out_closes_the_sockets_of_that_session(people):
    _alice, laptop, phone, _bob, bob_client = people
    on_laptop, on_phone, bobs = [await open_socket(c) for c in (laptop, phone, bob_client)]

    response = await sync_to_async(laptop.post)("/accounts/logout/")
    assert response.status_code == 302

    assert await close_code(on_laptop, disconnect=False) == CLOSE_SESSION_ENDED
    # A frame still in flight from the client is not answered after the close.
    await on_laptop.send_to(text_data="not json")
    await on_laptop.disconnect(timeout=DEADLINE)  # returns once the consumer handled both
    assert on_laptop.output_queue.empty()
    # Alice's other session is still signed in, and so is Bob: their sockets stay open.
    await still_open(on_phone, bobs)
    # The signed-out cookie no longer opens a socket.
    again = WebsocketCommunicator(application, ROUTE, headers=cookie_headers(laptop))
    assert await again.connect(timeout=DEADLINE) == (False, CLOSE_SESSION_ENDED)
    await on_phone.disconnect(timeout=DEADLINE)
    await bobs.disconnect(timeout=DEADLINE)


def _set_password(user) -> None:
    user.set_password("a-new-secret-of-Alice-7")
    user.save()


def _admin_password_form(user) -> None:
    admin = UserFactory(password=None, is_staff=True, is_superuser=True)
    response = signed_in(admin).post(
        f"/admin/auth/user/{user.pk}/password/",
        {"password1": "a-new-secret-of-Alice-7", "password2": "a-new-secret-of-Alice-7",
         "usable_password": "true"},
    )  # fmt: skip
    assert response.status_code == 302, response.content[:2000]


@pytest.mark.asyncio
@pytest.mark.parametrize("change", [_set_password, _admin_password_form])
async def test_ws_password_change_closes_every_socket_of_the_user(people, change):
    alice, laptop, phone, _bob, bob_client = people
    on_laptop, on_phone, bobs = [await open_socket(c) for c in (laptop, phone, bob_client)]
    before = alice.password

    await sync_to_async(change)(alice)

    await sync_to_async(alice.refresh_from_db)()
    assert alice.password != before
    assert await close_code(on_laptop) == CLOSE_SESSION_ENDED
    assert await close_code(on_phone) == CLOSE_SESSION_ENDED
    await still_open(bobs)
    await bobs.disconnect(timeout=DEADLINE)


@pytest.mark.asyncio
async def test_ws_periodic_recheck_closes_sockets_whose_session_ended(people, settings):
    settings.TRADEAPP_WS_SESSION_RECHECK = 0.2
    _alice, laptop, phone, _bob, bob_client = people
    carol = await sync_to_async(StaffUserFactory)(password=None)
    carol_client = await sync_to_async(signed_in)(carol)
    sockets = [await open_socket(c) for c in (laptop, phone, carol_client, bob_client)]
    on_laptop, on_phone, carols, bobs = sockets
    name = django_settings.SESSION_COOKIE_NAME

    def end_sessions_where_no_signal_sees_it() -> None:
        # The laptop's session row deleted, the phone's expired, Carol's password hash changed
        # by a queryset update (no save, no signal).
        Session.objects.filter(session_key=laptop.cookies[name].value).delete()
        Session.objects.filter(session_key=phone.cookies[name].value).update(
            expire_date=timezone.now() - dt.timedelta(seconds=1)
        )
        get_user_model().objects.filter(pk=carol.pk).update(password=make_password("other-7x"))

    await sync_to_async(end_sessions_where_no_signal_sees_it)()

    assert await close_code(on_laptop) == CLOSE_SESSION_ENDED
    assert await close_code(on_phone) == CLOSE_SESSION_ENDED
    assert await close_code(carols) == CLOSE_SESSION_ENDED
    # Bob's session is checked as often and is fine.
    await still_open(bobs)
    await bobs.disconnect(timeout=DEADLINE)
