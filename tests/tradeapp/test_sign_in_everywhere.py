"""Every page, endpoint and WebSocket route needs a signed-in user: enumerated from the URLconf
and the WebSocket routing, not sampled, so a new view cannot slip through.

The REST API has its own enumeration (``tests/api/test_api.py``: 401/403 in the error shape);
the admin is Django's (its login page). Here: every other page answers an anonymous visitor with
a redirect to the sign-in page (GET and POST alike), every POST form refuses a request without
its CSRF token, and every WebSocket route closes with 4401 before anything is sent.
"""

from __future__ import annotations

import re

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from tests.factories import UserFactory
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_UNAUTHENTICATED
from tradeapp.routing import websocket_urlpatterns

#: Open to anyone: signing in, signing out, and the load balancers' health check.
PUBLIC = {"/accounts/login/", "/accounts/logout/", "/healthz"}
SAMPLE = "1"


def _patterns(patterns: list, prefix: str = "") -> list[str]:
    found: list[str] = []
    for entry in patterns:
        text = str(entry.pattern)
        if isinstance(entry, URLResolver):
            found += _patterns(entry.url_patterns, prefix + text)
        elif isinstance(entry, URLPattern):
            found.append(prefix + text)
    return found


def _concrete(raw: str) -> str:
    path = re.sub(r"<(?:\w+:)?\w+>", SAMPLE, raw)
    return "/" + path.replace("^", "").replace("$", "")


def page_paths() -> list[str]:
    """Every URL pattern outside the admin and the API, as a path."""
    paths = {
        _concrete(raw)
        for raw in _patterns(get_resolver().url_patterns)
        if not raw.startswith(("admin/", "api/"))
    }
    for path in paths:
        resolve(path)
    return sorted(paths)


def test_the_enumeration_finds_the_pages():
    paths = set(page_paths())
    assert {"/", "/bots/", "/bots/1/", "/bots/1/start/", "/markets/1/", "/backtests/new/",
            "/optimizations/1/", "/markets/data-status/"} <= paths  # fmt: skip
    assert len(paths) >= 20


@pytest.mark.django_db
@pytest.mark.parametrize("path", [p for p in page_paths() if p not in PUBLIC])
def test_every_page_sends_anonymous_visitors_to_sign_in(client, path):
    for method in ("get", "post"):
        response = getattr(client, method)(path)
        if response.status_code == 405:  # POST-only actions refuse a GET before anything
            continue
        assert response.status_code == 302, f"{method.upper()} {path}: {response.status_code}"
        assert response["Location"].startswith("/accounts/login/?next="), (method, path)


@pytest.mark.django_db
@pytest.mark.parametrize("path", [p for p in page_paths() if p not in PUBLIC])
def test_every_post_refuses_a_request_without_its_csrf_token(path):
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory())
    response = client.post(path, {"name": "x"})
    # 403: the CSRF check refused it; 405: the page takes no POST at all.
    assert response.status_code in (403, 405), f"POST {path}: {response.status_code}"


def ws_paths() -> list[str]:
    return sorted(_concrete(str(entry.pattern)) for entry in websocket_urlpatterns)


def test_the_websocket_enumeration_finds_the_users_routes():
    assert {"/ws/bot/1/status", "/ws/portfolio/1", "/ws/market/1", "/ws/dashboard"} <= set(
        ws_paths()
    )


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ws_paths())
async def test_every_websocket_route_refuses_anonymous_clients(path):
    communicator = WebsocketCommunicator(
        application, path, headers=[(b"origin", b"http://localhost")]
    )
    connected, code = await communicator.connect(timeout=10)
    assert not connected and code == CLOSE_UNAUTHENTICATED, (path, code)
