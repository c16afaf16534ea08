"""Browser tests: Playwright (Python) driving Debian's headless Chromium against the real ASGI
server (uvicorn, in a subprocess, on the test database), with a real Celery worker.

Nothing here skips: a missing Chromium fails with the command that installs it. The server runs
the suite's profile: over plain HTTP in the embedded default, over HTTPS (a throwaway
self-signed certificate) in the production profile, whose cookies are ``Secure``.

Each test's last screen is saved as ``artifacts/screenshots/<test>.png`` (``.ci/run`` keeps the
folder as CI artifacts; ``TRADEAPP_ARTIFACTS_DIR`` moves it).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import eventually

CHROMIUM_ARGS = [
    # As root in a container, without the background services a closed network refuses.
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TRADEAPP_ARTIFACTS_DIR", settings.BASE_DIR / "artifacts"))
    return path / "screenshots"


def chromium_executable() -> str:
    path = os.environ.get("TRADEAPP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(
            "Chromium is needed for the browser tests and is missing: "
            "apt-get install -y chromium chromium-driver (.ci/run installs it)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost, valid for a day (the production profile's HTTPS)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class AsgiServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _answers(url: str) -> bool:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{url}/accounts/login/", timeout=2, context=context) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def asgi_server(
    django_db_setup, django_db_blocker, redis_server, tmp_path_factory
) -> Iterator[AsgiServer]:
    """``uvicorn tradeapp.asgi:application`` (as the Procfile's web process) on the test DB."""
    from django.db import connection

    port = _free_port()
    folder = tmp_path_factory.mktemp("asgi")
    argv = [
        sys.executable, "-m", "uvicorn", "tradeapp.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--lifespan", "off", "--no-server-header", "--ws-max-size", "65536",
    ]  # fmt: skip
    scheme = "http"
    if settings.PRODUCTION:
        key, cert = _self_signed(folder)
        argv += ["--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
        scheme = "https"
    env = {**os.environ, "TRADEAPP_DATABASE_NAME": str(connection.settings_dict["NAME"])}
    log = settings.VAR_DIR / f"asgi-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = AsgiServer(f"{scheme}://127.0.0.1:{port}", proc, log)
    try:
        eventually(
            lambda: proc.poll() is None and _answers(server.url),
            timeout=60,
            message=f"the ASGI server answers on {server.url}",
        )
    except AssertionError as exc:
        proc.kill()
        pytest.fail(f"{exc}\n--- server log ---\n{server.log_tail()}")
    yield server
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright (never Playwright's own download).

    Module-scoped on purpose: Playwright's sync API keeps an event loop running in the main
    thread while it is started, which the async tests of other modules must not inherit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    # Playwright's sync API keeps an event loop in this thread between calls; Django's ORM
    # calls made by the tests themselves are still synchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class Browsing:
    """A page in a fresh browser context, with the JavaScript errors it raised."""

    page: object
    errors: list[str]
    server: AsgiServer

    def url(self, path: str) -> str:
        return f"{self.server.url}{path}"

    def screenshot(self, name: str) -> Path:
        folder = artifacts_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browsing(request, chromium, asgi_server, celery_worker) -> Iterator[Browsing]:
    context = chromium.new_context(
        base_url=asgi_server.url,
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 900},
        timezone_id="Europe/Berlin",  # times must show in the viewer's zone, not UTC
        locale="en-GB",
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def console(message) -> None:
        if message.type == "error":
            errors.append(f"console error: {message.text} at {message.location}")

    page.on("console", console)
    session = Browsing(page, errors, asgi_server)
    try:
        yield session
    finally:
        try:
            session.screenshot(request.node.name)
        finally:
            context.close()
