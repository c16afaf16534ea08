"""Both settings profiles, each resolved in a fresh interpreter with a controlled environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "profile": settings.TRADEAPP_PROFILE,
    "debug": settings.DEBUG,
    "engine": db["ENGINE"],
    "db_name": str(db["NAME"]),
    "db_host": db.get("HOST", ""),
    "redis_url": settings.REDIS_URL,
    "broker": settings.CELERY_BROKER_URL,
    "layer_hosts": settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"],
    "var_dir": str(settings.VAR_DIR),
    "allowed_hosts": settings.ALLOWED_HOSTS,
    "ssl_redirect": getattr(settings, "SECURE_SSL_REDIRECT", False),
    "secret_len": len(settings.SECRET_KEY),
    "ws_recheck": settings.TRADEAPP_WS_SESSION_RECHECK,
}))
"""
PROD = {
    "DATABASE_URL": "postgres://trader@db.internal:5432/tradeapp",
    "REDIS_URL": "redis://cache.internal:6379/2",
    "DJANGO_SECRET_KEY": "k" * 30 + "Q9x!-" + "z" * 30,
    "DJANGO_ALLOWED_HOSTS": "trade.example.com",
    "DJANGO_DEBUG": "0",
    "TRADEAPP_FERNET_KEYS": "ktg20CeSV29Jsrsr3OpyVtq7UqMiOoxgz5D1DwNunl4=",
}
PROFILE_VARS = (
    "DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_DEBUG",
    "TRADEAPP_DATABASE_NAME", "TRADEAPP_VAR_DIR", "TRADEAPP_FERNET_KEYS", "TRADEAPP_HOST",
    "TRADEAPP_WS_SESSION_RECHECK",
)  # fmt: skip


def run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in PROFILE_VARS}
    base["DJANGO_SETTINGS_MODULE"] = "tradeapp.settings"
    return subprocess.run(
        [sys.executable, *args],
        env={**base, **env},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def resolve(env: dict[str, str]) -> dict:
    proc = run_python(env, "-c", "import django; django.setup()\n" + PROBE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def refusal(env: dict[str, str]) -> str:
    proc = run_python(env, "-c", PROBE)
    assert proc.returncode != 0, f"settings were accepted: {proc.stdout}"
    assert "ImproperlyConfigured" in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_settings_embedded_default_uses_sqlite_and_private_redis(tmp_path):
    got = resolve({"TRADEAPP_VAR_DIR": str(tmp_path)})
    assert got["profile"] == "embedded"
    assert got["engine"] == "django.db.backends.sqlite3"
    assert got["db_name"] == str(tmp_path / "db.sqlite3")
    sock = tmp_path / "redis.sock"
    assert got["redis_url"] == f"unix://{sock}?db=0"
    assert got["broker"] == f"redis+socket://{sock}?virtual_host=0"
    assert got["layer_hosts"] == [{"address": f"unix://{sock}?db=0", "socket_timeout": None}]
    # A secret key is generated once and kept, so sessions survive restarts.
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert resolve({"TRADEAPP_VAR_DIR": str(tmp_path)})["secret_len"] == got["secret_len"] >= 50


def test_settings_embedded_var_dir_defaults_under_project():
    got = resolve({})
    assert got["var_dir"] == str(settings.BASE_DIR / "var")
    assert got["db_name"] == str(settings.BASE_DIR / "var" / "db.sqlite3")


def test_settings_production_uses_postgresql_and_redis():
    got = resolve(PROD)
    assert got["profile"] == "production"
    assert got["debug"] is False
    assert got["engine"] == "django.db.backends.postgresql"
    assert (got["db_name"], got["db_host"]) == ("tradeapp", "db.internal")
    assert got["redis_url"] == got["broker"] == "redis://cache.internal:6379/2"
    assert got["layer_hosts"] == [
        {"address": "redis://cache.internal:6379/2", "socket_timeout": None}
    ]
    assert got["allowed_hosts"] == ["trade.example.com"]
    assert got["ssl_redirect"] is True


@pytest.mark.parametrize(
    "missing",
    [
        "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL",
        "TRADEAPP_FERNET_KEYS",
    ],
)  # fmt: skip
def test_settings_production_refuses_missing_value(missing):
    env = {k: v for k, v in PROD.items() if k != missing}
    assert missing in refusal(env)


def test_settings_production_refuses_sqlite():
    message = refusal({**PROD, "DATABASE_URL": "sqlite:////tmp/prod.sqlite3"})
    assert "PostgreSQL" in message


def test_settings_production_refuses_non_redis_url():
    assert "REDIS_URL" in refusal({**PROD, "REDIS_URL": "amqp://guest@localhost//"})


def test_settings_database_name_override_points_workers_at_another_database():
    got = resolve({**PROD, "TRADEAPP_DATABASE_NAME": "test_tradeapp"})
    assert got["db_name"] == "test_tradeapp"


def test_settings_production_passes_deploy_checks():
    proc = run_python(PROD, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


def test_settings_debug_production_fails_deploy_checks():
    # The check really looks at the settings: production with DEBUG on is reported.
    proc = run_python({**PROD, "DJANGO_DEBUG": "1"}, "manage.py", "check", "--deploy",
                      "--fail-level", "WARNING")  # fmt: skip
    assert proc.returncode != 0
    assert "DEBUG" in proc.stderr + proc.stdout


# --- DEBUG only on a loopback address ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
        ("localhost", True), ("LocalHost", True), ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("[2001:db8::1]", False),
        ("trade.example.com", False), ("localhost.example.com", False),
    ],
)  # fmt: skip
def test_settings_loopback_hosts(host, loopback):
    from tradeapp.settings import _loopback

    assert _loopback(host) is loopback


def test_settings_embedded_debug_is_on_only_while_served_on_loopback(tmp_path):
    var = {"TRADEAPP_VAR_DIR": str(tmp_path)}
    default = resolve(var)  # TRADEAPP_HOST unset: 127.0.0.1 (the other names: above)
    assert default["debug"] is True
    assert default["ws_recheck"] == 60  # TRADEAPP_WS_SESSION_RECHECK's default
    assert resolve({**var, "TRADEAPP_HOST": "0.0.0.0"})["debug"] is False


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_settings_explicit_debug_on_a_non_loopback_host_refuses_to_start(tmp_path, profile):
    base = {"TRADEAPP_VAR_DIR": str(tmp_path)} if profile == "embedded" else PROD
    message = refusal({**base, "DJANGO_DEBUG": "1", "TRADEAPP_HOST": "0.0.0.0"})
    assert "DJANGO_DEBUG=1 with TRADEAPP_HOST=0.0.0.0" in message
    assert "loopback" in message


def test_settings_ws_session_recheck_must_be_a_positive_number_of_seconds(tmp_path):
    message = refusal({"TRADEAPP_VAR_DIR": str(tmp_path), "TRADEAPP_WS_SESSION_RECHECK": "0"})
    assert "TRADEAPP_WS_SESSION_RECHECK must be a positive number of seconds" in message
