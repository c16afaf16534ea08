from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command


@pytest.mark.django_db
def test_ensure_admin_creates_superuser_from_env_and_is_idempotent(monkeypatch, capsys):
    monkeypatch.setenv("TRADEAPP_ADMIN_USERNAME", "demo")
    monkeypatch.setenv("TRADEAPP_ADMIN_PASSWORD", "s3cret-demo-pass")
    call_command("ensure_admin")
    call_command("ensure_admin")
    users = get_user_model().objects.filter(username="demo")
    assert users.count() == 1
    admin = users.get()
    assert admin.is_superuser and admin.is_staff and admin.check_password("s3cret-demo-pass")
    assert "s3cret-demo-pass" in capsys.readouterr().out


@pytest.mark.django_db
def test_ensure_admin_generates_and_keeps_a_password_in_embedded_profile(
    monkeypatch, settings, tmp_path, capsys
):
    settings.PRODUCTION = False
    settings.VAR_DIR = tmp_path
    monkeypatch.delenv("TRADEAPP_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("TRADEAPP_ADMIN_USERNAME", "admin")
    call_command("ensure_admin")
    password = (tmp_path / "admin-password").read_text().strip()
    assert len(password) >= 12
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600
    call_command("ensure_admin")
    assert (tmp_path / "admin-password").read_text().strip() == password
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert password in capsys.readouterr().out


@pytest.mark.django_db
def test_ensure_admin_creates_nobody_in_production_without_a_password(monkeypatch, settings):
    settings.PRODUCTION = True
    monkeypatch.delenv("TRADEAPP_ADMIN_PASSWORD", raising=False)
    call_command("ensure_admin")
    assert not get_user_model().objects.exists()


def test_embedded_redis_command_refuses_in_production(settings):
    from django.core.management.base import CommandError

    settings.EMBEDDED_REDIS_SOCKET = None
    with pytest.raises(CommandError, match="REDIS_URL"):
        call_command("embedded_redis")
