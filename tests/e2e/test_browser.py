"""The user's surfaces in a real browser (see ``conftest.py``)."""

from __future__ import annotations

import pytest

from tests.factories import UserFactory

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def trader(transactional_db):
    user = UserFactory(username="trader")
    user.set_password(PASSWORD)
    user.save()
    return user


def sign_in(browsing, username: str = "trader") -> None:
    page = browsing.page
    page.goto("/")
    page.wait_for_url("**/accounts/login/**")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(browsing.url("/"))


def test_sign_in_and_out(browsing, trader):
    page = browsing.page
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("trader")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").is_visible()
    sign_in(browsing)
    assert page.locator(".who").inner_text() == "trader"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/accounts/login/**")
    page.goto("/bots/")
    page.wait_for_url("**/accounts/login/?next=/bots/")
    assert browsing.errors == []
