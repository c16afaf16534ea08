"""WebSocket round trips through the real ASGI application and the channels-redis layer."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from tradeapp import events
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED

ROUTE = "/ws/system/events"


def session_headers(user=None, origin: str = "http://localhost") -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", origin.encode())]
    if user is not None:
        client = Client()
        client.force_login(user)
        sessionid = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={sessionid}".encode()))
    return headers


@pytest.fixture
def staff_headers(transactional_db):
    from tests.factories import StaffUserFactory

    return session_headers(StaffUserFactory())


@pytest.mark.asyncio
async def test_ws_staff_gets_snapshot_then_published_events(staff_headers):
    communicator = WebsocketCommunicator(application, ROUTE, headers=staff_headers)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    baseline = snapshot["streams"][events.SYSTEM_EVENT_CHANNEL]

    sent = await events.apublish("system_events", {"type": "bot.started", "bot_id": 7})
    received = await communicator.receive_json_from(timeout=5)
    assert received == sent
    assert received["seq"] == baseline + 1

    # A client that saw a gap asks for a fresh snapshot on the same connection.
    await communicator.send_json_to({"type": "snapshot"})
    again = await communicator.receive_json_from(timeout=5)
    assert again["streams"][events.SYSTEM_EVENT_CHANNEL] >= received["seq"]
    await communicator.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_ws_unauthenticated_connection_is_refused():
    communicator = WebsocketCommunicator(application, ROUTE, headers=session_headers())
    connected, code = await communicator.connect(timeout=10)
    assert not connected
    assert code == CLOSE_UNAUTHENTICATED


@pytest.fixture
def plain_user_headers(transactional_db):
    from tests.factories import UserFactory

    return session_headers(UserFactory())


@pytest.mark.asyncio
async def test_ws_system_events_refused_to_non_staff(plain_user_headers):
    communicator = WebsocketCommunicator(application, ROUTE, headers=plain_user_headers)
    connected, code = await communicator.connect(timeout=10)
    assert not connected
    assert code == CLOSE_FORBIDDEN


@pytest.fixture
def foreign_origin_headers(transactional_db):
    from tests.factories import StaffUserFactory

    return session_headers(StaffUserFactory(), origin="http://evil.example.net")


@pytest.mark.asyncio
async def test_ws_foreign_origin_is_refused(foreign_origin_headers):
    communicator = WebsocketCommunicator(application, ROUTE, headers=foreign_origin_headers)
    connected, _ = await communicator.connect(timeout=10)
    assert not connected
