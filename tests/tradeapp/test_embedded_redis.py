"""The embedded profile's private Redis: start, stop, and what a crashed run leaves behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import redis

from tradeapp import embedded_redis


@pytest.fixture
def sock():
    # Unix socket paths are limited to ~107 bytes: keep it short.
    with tempfile.TemporaryDirectory(prefix="tr-") as tmp:
        yield Path(tmp) / "r.sock"


def test_embedded_redis_starts_answers_and_stops(sock):
    proc = embedded_redis.start(sock)
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        assert client.set("k", "v") and client.get("k") == b"v"
        assert client.config_get("port")["port"] == "0"  # no TCP listener
    finally:
        embedded_redis.stop(proc)
    assert proc.returncode == 0
    assert not embedded_redis.is_running(sock)


def test_embedded_redis_replaces_a_stale_server(sock):
    stale = embedded_redis.start(sock)
    fresh = embedded_redis.start(sock)
    try:
        assert stale.wait(10) == 0  # shut down by the new start
        assert embedded_redis.is_running(sock)
    finally:
        embedded_redis.stop(fresh)


def test_embedded_redis_removes_a_dead_socket_file(sock):
    sock.write_text("left behind")
    proc = embedded_redis.start(sock)
    try:
        assert embedded_redis.is_running(sock)
    finally:
        embedded_redis.stop(proc)
