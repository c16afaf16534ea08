"""A WebSocket live view survives a quiet stream: the channel layer's blocking read outlasts
channels-redis's idle wait.

channels-redis waits for a consumer's next message with ``BZPOPMIN`` blocking for
``brpop_timeout`` (5 s); redis-py 8 made its default ``socket_timeout`` 5 s too, so a stream
quiet for 5 s raced the two timeouts, the read raised ``TimeoutError`` inside the consumer and
the connection closed with 1011 (found by ``bench_ws_clients``: clients cut off mid-run).
"""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from tests.factories import StaffUserFactory
from tests.tradeapp.test_consumers import session_headers
from tradeapp import events
from tradeapp.asgi import application


def test_channel_layer_reads_without_a_socket_timeout():
    # None, not merely a longer timeout: with any finite one, a consumer task cancelled while
    # its blocking read waits (a refused connection, a closing event loop) did not end.
    for host in settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]:
        assert isinstance(host, dict), "a plain URL gets redis-py's 5 s socket_timeout"
        assert "socket_timeout" in host and host["socket_timeout"] is None, host


@pytest.fixture
def staff_headers(transactional_db):
    return session_headers(StaffUserFactory())


@pytest.mark.asyncio
async def test_ws_connection_outlives_a_quiet_stream(staff_headers):
    communicator = WebsocketCommunicator(application, "/ws/system/events", headers=staff_headers)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    snapshot = await communicator.receive_json_from(timeout=5)
    # Two of channels-redis's blocking waits with nothing to read.
    await asyncio.sleep(2 * get_channel_layer().brpop_timeout + 1)
    assert await communicator.receive_nothing(timeout=0.1)
    sent = await events.apublish("system_events", {"type": "bot.started", "bot_id": 7})
    received = await communicator.receive_json_from(timeout=5)
    assert received == sent
    assert received["seq"] == snapshot["streams"][events.SYSTEM_EVENT_CHANNEL] + 1
    await communicator.disconnect()


def test_publish_counts_group_members_on_the_fast_path():
    # events.publish reads the groups' member counts over one synchronous connection; a host
    # that carries connection options (socket_timeout above) must keep that path.
    layer = get_channel_layer()
    assert events._members(layer, ["market_data.NOBODY-USDT"]) == {"market_data.NOBODY-USDT": 0}
