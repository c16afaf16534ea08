"""Shared plumbing of the benchmarks that need Django, PostgreSQL, Redis or a server process.

- ``isolated``: runs a benchmark module in a child interpreter and returns its rows. Django's
  settings are per process (the first module to call ``django.setup()`` fixes the database for
  every later one), so each module that configures Django runs in its own.
- ``pg_database``: a throwaway PostgreSQL database (created, migrated, dropped).
- ``production_env``: the production profile's variables for this machine's services.
- ``serve``: the real ASGI app under uvicorn in a subprocess, on a free loopback port.
- ``percentiles``, ``rss_slope``: the figures the tables report.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
#: This machine's Redis, database 12 unless ``BENCH_REDIS_URL`` says otherwise.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
FERNET = "ktg20CeSV29Jsrsr3OpyVtq7UqMiOoxgz5D1DwNunl4="


def isolated(module: str, quick: bool, extra: Sequence[str] = ()) -> list[dict]:
    """``python -m bench.<module> --rows FILE [--quick] [extra]`` in a child process (its
    output goes to ours); its rows. A failing child fails the benchmark loudly."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        argv = [sys.executable, "-m", f"bench.{module}", "--rows", str(out), *extra]
        if quick:
            argv.append("--quick")
        done = subprocess.run(argv, cwd=ROOT, env=dict(os.environ), check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(f"bench.{module} failed (exit {done.returncode}); see its output")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def main(run: Callable[..., list[dict]], doc: str | None, options: Callable | None = None) -> int:
    """The ``__main__`` of a benchmark module: ``--quick``, ``--rows FILE`` (JSON, for
    ``isolated``) and the module's own ``options(parser)``; prints the table when standalone."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rows", type=Path, help="write the rows to this JSON file")
    if options is not None:
        options(parser)
    args = vars(parser.parse_args())
    rows_file = args.pop("rows")
    rows = run(**args)
    if rows_file is not None:
        rows_file.write_text(json.dumps(rows))
    else:
        from bench.run import format_table

        print(format_table(rows))
    return 0


def production_env(database_url: str, *, redis_url: str = REDIS_URL) -> dict[str, str]:
    """Environment of the production profile on this machine's PostgreSQL and Redis."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TRADEAPP_FERNET_KEYS": os.environ.get("TRADEAPP_FERNET_KEYS", FERNET),
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "tradeapp.settings"),
        # TLS ends at a proxy in production; the benchmarks speak plain HTTP on loopback.
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_LOG_LEVEL": "WARNING",
    }


@contextmanager
def pg_database(name: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL database ``name`` (dropped first if left over; dropped after unless
    ``keep``); yields its URL."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        if not keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def django_setup(env: dict[str, str]) -> None:
    """Django in this process on ``env`` (``production_env``), migrated."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(env: dict[str, str], *, workers: int = 1, log_name: str = "uvicorn") -> Iterator[str]:
    """``uvicorn tradeapp.asgi:application`` as the Procfile runs it (``workers`` processes),
    on a free loopback port; yields its base URL once ``/healthz`` answers."""
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "tradeapp.asgi:application", "--host", "127.0.0.1",
        "--port", str(port), "--lifespan", "off", "--no-server-header", "--no-access-log",
        "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    log = Path(tempfile.gettempdir()) / f"bench-{log_name}-{os.getpid()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own argv
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited ({proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:  # noqa: S310
                    if response.status in (200, 503):
                        break
            except OSError as exc:
                if getattr(exc, "code", None) in (200, 503):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not answer /healthz in 60 s; see {log}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentiles(values: Sequence[float] | np.ndarray, *qs: float) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return [float("nan")] * len(qs)
    return [float(np.percentile(array, q)) for q in qs]


def rss_slope(samples_mb: Sequence[float], warmup: int) -> tuple[float, float]:
    """(MB per sample by least squares, MB grown from the first to the last sample) after the
    first ``warmup`` samples: memory is flat when both stay within noise."""
    tail = np.asarray(samples_mb[warmup:], dtype=np.float64)
    if tail.size < 2:
        return 0.0, 0.0
    slope = float(np.polyfit(np.arange(tail.size, dtype=np.float64), tail, 1)[0])
    return slope, float(tail[-1] - tail[0])


def process_rss_mb(pid: int, *, children: bool = True) -> float:
    """Resident memory of ``pid`` (and its children: a prefork worker's pool), in MB."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *(proc.children(recursive=True) if children else [])]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20
