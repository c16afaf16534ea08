"""`make run` under supervisord: one dead process does not take the platform down.

The real thing, in the embedded profile whatever the suite's profile (its own var dir under
tmp_path, its own SQLite and private Redis, its own port): ``manage.py supervise`` started in a
session of its own, as `setsid make run` starts it. The worker, then the web process, are
SIGKILLed; each comes back with a new pid while the others keep running, /healthz counts the
restart, ``process.restarted`` is published on ``system_events``. Then SIGINT to the process
group (Ctrl-C) stops everything and leaves no process of the session behind.

A process that keeps crashing (``test_a_process_that_keeps_crashing_...``) is given up by
supervisord (FATAL) and started again by the events listener after a growing wait, forever.

The systemd units of deploy/systemd run the Procfile's commands (checked) and pass
``systemd-analyze verify``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests
from celery import Celery
from django.conf import settings

from tests.support import eventually
from tradeapp import supervise

BASE_DIR = settings.BASE_DIR
PROCESSES = ["redis", "web", "worker", "research", "beat", "collector"]
ADMIN_PASSWORD = "supervise-test-password"  # a throwaway admin of a throwaway database
# Variables of the suite's profile that must not reach the platform: it runs embedded.
PROFILE_VARIABLES = {
    "DATABASE_URL", "REDIS_URL", "TRADEAPP_DATABASE_NAME", "TRADEAPP_REQUIRE_SERVICES",
    "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE",
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_processes(sid: int) -> list[str]:
    """``pid cmdline`` of every live process in session ``sid`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(f"{entry.name} {cmdline}")
    return found


class Platform:
    """``manage.py supervise`` in a session of its own, on its own var dir and port."""

    def __init__(self, tmp_path: Path, *, procfile: Path | None = None, **env: str) -> None:
        self.var = tmp_path / "var"
        (self.var / "static").mkdir(parents=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bindir = os.path.dirname(sys.executable)
        self.env = {
            **{k: v for k, v in os.environ.items()
               if k not in PROFILE_VARIABLES and not k.startswith("SUPERVISOR_")},
            "TRADEAPP_VAR_DIR": str(self.var), "TRADEAPP_HOST": "127.0.0.1",
            "TRADEAPP_PORT": str(self.port), "TRADEAPP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CELERY_CONCURRENCY": "1", "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            **env,
        }  # fmt: skip
        self.procfile = procfile
        self.log = tmp_path / "supervise.log"
        self.proc: subprocess.Popen | None = None

    def manage(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True,
            timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def start(self) -> None:
        argv = [sys.executable, "manage.py", "supervise"]
        if self.procfile:
            argv += ["--procfile", str(self.procfile)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=BASE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def sid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def overview(self) -> dict:
        return supervise.overview(
            f"unix://{self.var / 'supervisor.sock'}", self.var / "processes.json"
        )

    def processes(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.overview()["processes"]}

    def redis(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.var / "redis.sock"), socket_timeout=5)

    def interrupt(self, timeout: float = 60) -> None:
        """Ctrl-C: SIGINT to the process group, then wait for supervisord to exit."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.sid, signal.SIGINT)
        self.proc.wait(timeout)

    def kill_everything(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.interrupt(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for line in _session_processes(self.sid):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.poll() is None and self.proc.kill()


class EventRecorder:
    """Everything published on ``system_events`` of the platform's Redis, from a thread."""

    def __init__(self, client: redis.Redis) -> None:
        self.events: list[dict] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe("system_events")
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    message = self._pubsub.get_message(timeout=0.2)
                except Exception:  # Redis restarting, or the connection closing under us
                    time.sleep(0.2)
                    continue
                if message:
                    self.events.append(json.loads(message["data"]))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def of(self, kind: str, process: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind and e.get("process") == process]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


class HealthPoller:
    """/healthz asked every 0.2 s from a thread: every answer's status, or the error."""

    def __init__(self, url: str) -> None:
        self.results: list[int | str] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.results.append(requests.get(f"{url}/healthz", timeout=10).status_code)
                except requests.RequestException as exc:
                    self.results.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(15)
        return self.results


@pytest.fixture
def platform(tmp_path):
    plat = Platform(tmp_path, TRADEAPP_PROCESS_START_SECONDS="5")
    try:
        yield plat
    finally:
        plat.kill_everything()
        print(f"--- supervised platform output (tail) ---\n{plat.output()[-6000:]}")


def _staff_session(url: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{url}/admin/login/", timeout=10).raise_for_status()
    response = session.post(
        f"{url}/admin/login/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "username": "admin",
              "password": ADMIN_PASSWORD, "next": "/admin/"},
        allow_redirects=False, timeout=10,
    )  # fmt: skip
    assert response.status_code == 302, f"admin sign-in answered {response.status_code}"
    return session


def _processes_of(session: requests.Session, url: str) -> dict[str, dict]:
    body = session.get(f"{url}/healthz", timeout=10).json()
    return {p["name"]: p for p in body["processes"]["processes"]}


@pytest.mark.service_restarts  # embedded whatever the suite's profile: CI runs it once
def test_a_killed_process_is_restarted_while_the_others_keep_running(platform):
    plat = platform
    started = time.monotonic()
    # One Django start-up for both (as `make run` does them before supervise).
    plat.manage("shell", "-c", "from django.core.management import call_command as c; "
                "c('migrate', interactive=False, verbosity=0); c('ensure_admin')")  # fmt: skip
    print(f"\nmigrate and admin: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    plat.start()
    eventually(
        lambda: requests.get(f"{plat.url}/healthz", timeout=10).status_code == 200,
        timeout=120, interval=0.5, message="/healthz of the supervised platform turns 200",
    )  # fmt: skip
    print(f"supervise -> /healthz 200: {time.monotonic() - started:.1f} s")
    staff = _staff_session(plat.url)
    before = _processes_of(staff, plat.url)
    assert set(PROCESSES) | {"events", "logs"} == set(before)
    assert all(p["restarts"] == 0 and p["pid"] for p in before.values()), before
    # Not signed in: the verdict and counts only, no pids.
    anonymous = requests.get(f"{plat.url}/healthz", timeout=10).json()["processes"]
    assert anonymous["ok"] and anonymous["total"] == 8 and anonymous["restarts"] == 0
    assert "processes" not in anonymous

    events = EventRecorder(plat.redis())
    # Not the current app: the suite's tasks keep going to the suite's broker.
    broker = Celery(
        broker=f"redis+socket://{quote(str(plat.var / 'redis.sock'))}?virtual_host=0",
        set_as_current=False,
    )
    worker_name = f"worker@{socket.gethostname()}"
    try:
        # --- the worker dies ---
        eventually(lambda: plat.processes()["worker"]["state"] == "RUNNING", timeout=30)
        poller = HealthPoller(plat.url)
        killed_at = time.monotonic()
        os.kill(before["worker"]["pid"], signal.SIGKILL)
        # supervisord knows the new pid at once; the restart is counted by the events
        # listener as soon as it gets the event.
        after = eventually(
            lambda: (p := _processes_of(staff, plat.url))["worker"]["restarts"] == 1
            and p["worker"]["pid"] not in (None, before["worker"]["pid"]) and p,
            timeout=60, message="the worker runs again with a new pid, its restart counted",
        )  # fmt: skip
        eventually(
            lambda: broker.control.ping(destination=[worker_name], timeout=1.0),
            timeout=60, interval=0.2, message=f"{worker_name} answers a Celery ping again",
        )  # fmt: skip
        worker_back = time.monotonic() - killed_at
        answers = poller.stop()
        print(f"worker SIGKILLed -> answering a Celery ping again: {worker_back:.1f} s")
        assert answers and all(isinstance(a, int) for a in answers), (
            f"web stopped answering while the worker restarted: {answers}"
        )
        worker = after["worker"]
        assert worker["last_exit"]["signal"] == "SIGKILL"
        assert worker["last_exit"]["pid"] == before["worker"]["pid"]
        for name in ("redis", "web", "research", "beat", "collector"):
            assert after[name]["pid"] == before[name]["pid"], f"{name} was restarted too"
            assert after[name]["restarts"] == 0
        restarted = eventually(
            lambda: events.of("process.restarted", "worker"), timeout=30,
            message="process.restarted published for the worker",
        )  # fmt: skip
        assert restarted[0]["restarts"] == 1 and restarted[0]["pid"] == worker["pid"]
        exited = events.of("process.exited", "worker")
        assert exited and exited[0]["signal"] == "SIGKILL" and exited[0]["expected"] is False

        # --- the web process dies ---
        killed_at = time.monotonic()
        os.kill(before["web"]["pid"], signal.SIGKILL)
        eventually(
            lambda: requests.get(f"{plat.url}/healthz", timeout=10).status_code == 200,
            timeout=60, interval=0.1, message="/healthz answers 200 again after web died",
        )  # fmt: skip
        web_back = time.monotonic() - killed_at
        print(f"web SIGKILLed -> /healthz 200 again: {web_back:.1f} s")
        now = eventually(
            lambda: (p := _processes_of(staff, plat.url))["web"]["restarts"] == 1 and p,
            timeout=30, message="the web process's restart counted",
        )  # fmt: skip
        assert now["web"]["pid"] != before["web"]["pid"] and now["worker"]["restarts"] == 1
        eventually(lambda: events.of("process.restarted", "web"), timeout=30)
    finally:
        events.close()
        broker.close()

    # Named lines on the terminal, and the restarts logged there.
    output = plat.output()
    assert re.search(r"^worker +\| ", output, re.MULTILINE), "no 'worker | ' line in the output"
    assert "exited: worker (terminated by SIGKILL; not expected)" in output
    assert re.search(r"worker \(pid \d+\) exited unasked: terminated by SIGKILL", output)
    assert re.search(r"web restarted \(pid \d+, restart 1", output)

    # --- Ctrl-C ---
    started = time.monotonic()
    plat.interrupt(timeout=60)
    print(f"Ctrl-C -> supervisord gone: {time.monotonic() - started:.1f} s")
    time.sleep(0.5)
    left = _session_processes(plat.sid)
    assert not left, "processes left after Ctrl-C:\n" + "\n".join(left)
    assert not (plat.var / "supervisor.sock").exists()


@pytest.mark.service_restarts  # embedded whatever the suite's profile: CI runs it once
def test_a_process_that_keeps_crashing_keeps_being_restarted_ever_more_slowly(tmp_path):
    """supervisord gives up after ``startretries`` (FATAL); the events listener starts the
    process again after 1 s, then 2 s (``TRADEAPP_PROCESS_RETRY_AFTER`` doubling up to
    ``_MAX``), and the embedded Redis next to it runs on, untouched."""
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "redis: python manage.py embedded_redis\ncrash: sh -c 'echo crashing; exit 3'\n"
    )
    plat = Platform(
        tmp_path, procfile=procfile, TRADEAPP_PROCESS_START_SECONDS="1",
        TRADEAPP_PROCESS_START_RETRIES="1", TRADEAPP_PROCESS_RETRY_AFTER="1",
        TRADEAPP_PROCESS_RETRY_MAX="2",
    )  # fmt: skip
    try:
        plat.start()
        eventually(lambda: plat.redis().ping(), timeout=60, message="the embedded Redis answers")
        redis_pid = plat.processes()["redis"]["pid"]
        events = EventRecorder(plat.redis())
        try:
            # start, exit, 1 s, restart 1, exit: FATAL, 1 s, restart 2, exit, 1 s, restart 3,
            # exit: FATAL again, 2 s, restart 4.
            crash = eventually(
                lambda: (p := plat.processes()["crash"])["restarts"] >= 4 and p,
                timeout=60, interval=0.2,
                message="the crashing process is restarted again and again, FATAL or not",
            )  # fmt: skip
            eventually(lambda: events.of("process.fatal", "crash"), timeout=30)
        finally:
            events.close()
        assert crash["last_exit"]["exit_status"] == 3
        assert crash["last_exit"]["state"] == "BACKOFF"
        redis_now = plat.processes()["redis"]
        assert redis_now["pid"] == redis_pid and redis_now["restarts"] == 0
        output = plat.output()
        assert re.search(r"^crash +\| crashing$", output, re.MULTILINE)
        gave_up = "crash keeps dying: supervisord gave up on it; starting it again in"
        assert f"{gave_up} 1 s" in output and f"{gave_up} 2 s" in output
        # A second `make run` on the same var dir is refused, naming the running one.
        second = subprocess.run(
            [sys.executable, "manage.py", "supervise", "--procfile", str(procfile)],
            cwd=BASE_DIR, env=plat.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"supervisord (pid {plat.sid}) already runs the platform of" in second.stderr
        plat.interrupt(timeout=60)
        assert not _session_processes(plat.sid)
    finally:
        plat.kill_everything()


# --- Procfile and configuration ----------------------------------------------------------------


def test_the_procfile_splits_research_from_the_worker():
    processes = supervise.parse_procfile((BASE_DIR / "Procfile").read_text())
    assert list(processes) == PROCESSES
    queues = {
        name: re.search(r"--queues (\S+)", processes[name])[1] for name in ("worker", "research")
    }
    assert queues == {"worker": "${CELERY_QUEUES:-default,collect,bots}", "research": "backtests"}
    assert "${CELERY_RESEARCH_CONCURRENCY:-1}" in processes["research"]
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed | {settings.CELERY_TASK_DEFAULT_QUEUE} == set(settings.TRADEAPP_CELERY_QUEUES)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no process defined"),
        ("web uvicorn app", "line 1: expected 'name: command'"),
        ("# c\nweb:", "line 2: expected 'name: command'"),
        ("w eb: x", "process name 'w eb'"),
        ("web: a\nweb: b", "line 2: process 'web' is defined twice"),
        ("events: x", "'events' is reserved"),
        ("web: run --x ;y", "';' or '#' after a space"),
    ],
)
def test_a_bad_procfile_is_refused_naming_the_line(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        supervise.parse_procfile(text)


def test_production_runs_everything_but_the_embedded_redis():
    processes = supervise.parse_procfile((BASE_DIR / "Procfile").read_text())
    assert list(supervise.select_processes(processes, [], embedded=False)) == PROCESSES[1:]
    assert list(supervise.select_processes(processes, [], embedded=True)) == PROCESSES
    with pytest.raises(ValueError, match="embedded profile only"):
        supervise.select_processes(processes, ["redis"], embedded=False)
    with pytest.raises(ValueError, match="no process nope"):
        supervise.select_processes(processes, ["nope"], embedded=True)


def test_the_configuration_runs_each_command_through_sh_exec(tmp_path):
    processes = supervise.parse_procfile((BASE_DIR / "Procfile").read_text())
    text = supervise.render_config(
        processes, var_dir=tmp_path, base_dir=BASE_DIR, python=sys.executable,
        socket_path=tmp_path / "supervisor.sock",
        options=supervise.ProcessOptions(start_seconds=7, start_retries=4, stop_seconds=9),
    )  # fmt: skip
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    for name, command in processes.items():
        section = parser[f"program:{name}"]
        # supervisord expands %(...)s and reads "%%" as "%"; then splits like a shell.
        argv = shlex.split(section["command"].replace("%%", "%"))
        assert argv == ["/bin/sh", "-c", f"exec {command}"]
        assert (section["autorestart"], section["startsecs"], section["startretries"]) == (
            "true", "7", "4",
        )  # fmt: skip
        assert section["stdout_events_enabled"] == "true"
    assert parser["group:platform"]["programs"] == "web,worker,research,beat,collector"
    assert parser["eventlistener:events"]["events"] == "PROCESS_STATE"
    assert parser["eventlistener:logs"]["events"] == "PROCESS_LOG"


# --- production under systemd ------------------------------------------------------------------

UNITS = BASE_DIR / "deploy" / "systemd"
INSTALL_DIR = "/opt/tradeapp"  # where the units expect the checkout (README)
# Keys systemd < 254 does not know yet: it ignores them with a warning (and restarts after a
# constant RestartSec instead of a growing one).
NEWER_KEYS = {"RestartSteps": 254, "RestartMaxDelaySec": 254}


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists: keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in section if k == key]


def test_the_systemd_units_run_the_procfile_commands():
    processes = supervise.select_processes(
        supervise.parse_procfile((BASE_DIR / "Procfile").read_text()), [], embedded=False
    )
    services = {p.name for p in UNITS.glob("tradeapp-*.service")}
    assert services == {f"tradeapp-{name}.service" for name in processes} | {
        "tradeapp-migrate.service"
    }
    target = _unit(UNITS / "tradeapp.target")
    wanted = {u for line in _values(target["Unit"], "Wants") for u in line.split()}
    assert wanted == services
    for name, command in processes.items():
        unit = _unit(UNITS / f"tradeapp-{name}.service")
        service = unit["Service"]
        defaults = dict(
            pair.split("=", 1) for line in _values(service, "Environment") for pair in line.split()
        )

        def systemd_form(match: re.Match, defaults=defaults, name=name) -> str:
            variable, default = match[1], match[2]
            assert defaults.get(variable) == default, (
                f"tradeapp-{name}.service: Environment={variable}={default} expected "
                "(the Procfile's default)"
            )
            return "${" + variable + "}"

        argv = re.sub(r"\$\{(\w+):-([^}]*)\}", systemd_form, command).split()
        argv[0] = f"{INSTALL_DIR}/.venv/bin/{argv[0]}"
        expected = " ".join(argv).replace("%", "%%")  # %h is a systemd specifier
        assert _values(service, "ExecStart") == [expected], f"tradeapp-{name}.service"
        assert _values(service, "Restart") == ["on-failure"]
        assert _values(service, "RestartSec")
        assert _values(unit["Unit"], "StartLimitIntervalSec") == ["0"]  # never given up
        assert _values(unit["Unit"], "PartOf") == ["tradeapp.target"]
    for path in UNITS.glob("tradeapp-*.service"):
        service = _unit(path)["Service"]
        for key, value in [
            ("User", "tradeapp"), ("EnvironmentFile", "/etc/tradeapp/tradeapp.env"),
            ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
            ("ReadWritePaths", "/var/lib/tradeapp"), ("StateDirectory", "tradeapp"),
            ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
        ]:  # fmt: skip
            assert _values(service, key) == [value], f"{path.name}: {key}={value}"
        assert "TRADEAPP_VAR_DIR=/var/lib/tradeapp" in " ".join(_values(service, "Environment"))


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    """``systemd-analyze verify`` on the units as installed in this checkout: ExecStart must
    exist, so /opt/tradeapp becomes this checkout. Any warning fails the test, except the keys
    this machine's systemd is too old to know."""
    analyze = "/usr/bin/systemd-analyze"
    if not os.access(analyze, os.X_OK):
        pytest.fail(
            f"{analyze} is missing: install systemd (apt-get install systemd) to verify the "
            "units of deploy/systemd; the test cannot check them without it"
        )
    version = subprocess.run(
        [analyze, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    allowed = {key for key, since in NEWER_KEYS.items() if int(version.split(".")[0]) < since}
    files = []
    for path in sorted([*UNITS.glob("*.service"), UNITS / "tradeapp.target"]):
        rendered = tmp_path / path.name
        rendered.write_text(path.read_text().replace(INSTALL_DIR, str(BASE_DIR)))
        files.append(str(rendered))
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", *files],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    unexplained = [
        line for line in lines
        if not any(f"Unknown key '{key}' in section [Service]" in line for key in allowed)
    ]  # fmt: skip
    assert result.returncode == 0 and not unexplained, (
        f"systemd-analyze verify (systemd {version}) exited {result.returncode}:\n"
        + "\n".join(unexplained)
        + "\n(if it cannot run at all here, e.g. without /run/systemd, the message above says "
        "why: the units are then unverified, not wrong)"
    )
