"""`make run` under supervisor: a process that dies is started again, the others keep running.

The ``Procfile`` stays the one list of the platform's commands. ``python manage.py supervise``
turns it into a supervisord configuration (``render_config``, written to
``var/supervisord.conf``) and replaces itself with ``supervisord -n``:

* Every Procfile line is a program, run as ``/bin/sh -c 'exec COMMAND'``: the Procfile's
  ``${VAR:-default}`` work as they did under honcho, and the pid supervisord watches is the
  program's own. A program that exits is started again (``autorestart``). One that dies within
  ``startsecs`` of its start is retried after 1, 2, 3, ... s (supervisor's backoff) and given
  up after ``startretries`` (FATAL); the ``events`` listener then starts it again after a wait
  that doubles up to a cap. So a process that keeps crashing keeps being retried, ever more
  slowly, and never takes the others down.
* ``redis`` (the embedded Redis) runs only in the embedded profile; it starts first and stops
  last (priority). The other programs form one group, so that Ctrl-C stops them together.
* Output: supervisord writes a child's output as it comes, without saying whose it is. So each
  chunk is sent as a ``PROCESS_LOG`` event instead (``stdout_events_enabled``, stderr merged
  into stdout), and the ``logs`` listener (``python -m tradeapp.supervise logs``, no Django)
  prints it line by line as ``worker    | ...`` on supervisord's stdout: the terminal.
* Restarts: the ``events`` listener (``python manage.py process_events``, ``ProcessMonitor``)
  gets every ``PROCESS_STATE`` change; it logs and counts the exits nobody asked for and the
  restarts that follow, publishes them on ``system_events`` (``process.exited``,
  ``process.restarted``, ``process.fatal``) and keeps the counts in ``var/processes.json``
  (replaced atomically). ``/healthz`` reads that file and supervisord's own
  ``getAllProcessInfo`` over its unix socket: neither needs Redis, which may be the process
  that died.

Ctrl-C (SIGINT to the terminal's process group) reaches supervisord but not its children
(supervisord gives each a process group of its own). It stops the programs (SIGTERM, then
after ``stopwaitsecs`` SIGKILL to the program's whole process group: a Celery worker's pool
too), then the embedded Redis, then the listeners, and exits.

Importing this module does not load Django: the ``logs`` listener runs without it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import select
import shlex
import signal
import socket
import stat
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

logger = logging.getLogger("tradeapp.processes")

# Programs that only the embedded profile runs (production has its own Redis server).
EMBEDDED_ONLY = frozenset({"redis"})
# The group of every program but the embedded Redis, and the two event listeners' names.
GROUP = "platform"
EVENTS_LISTENER = "events"
LOGS_LISTENER = "logs"
RESERVED_NAMES = frozenset({GROUP, EVENTS_LISTENER, LOGS_LISTENER, "supervisord"})
# supervisord's own log in the var dir (it also writes it to stdout, the terminal).
SUPERVISORD_LOG = "supervisord.log"
# Longest unix socket path Linux accepts (sun_path holds 108 bytes with the final NUL).
MAX_SOCKET_PATH = 107

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# supervisor's configuration parser takes ";" or "#" after whitespace as a comment.
_INLINE_COMMENT_RE = re.compile(r"\s[;#]")

# supervisor's process states (supervisor.states.ProcessStates) by name.
UP_STATES = frozenset({"STARTING", "RUNNING"})
# The states a process enters when it exited without being asked to stop.
EXIT_STATES = frozenset({"EXITED", "BACKOFF"})


@dataclass(frozen=True)
class ProcessOptions:
    """supervisor's restart and stop options, the same for every program."""

    start_seconds: int  # startsecs
    start_retries: int  # startretries
    stop_seconds: int  # stopwaitsecs


# --- Procfile ----------------------------------------------------------------------------------


def parse_procfile(text: str, *, source: str = "Procfile") -> dict[str, str]:
    """The ``name: command`` lines of a Procfile, in order; blank lines and ``#`` comments are
    skipped. Raises ``ValueError`` naming the line for anything else."""
    processes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        name, command = name.strip(), command.strip()
        where = f"{source}, line {number}"
        if not sep or not command:
            raise ValueError(f"{where}: expected 'name: command', got {raw!r}")
        if not _NAME_RE.match(name):
            raise ValueError(
                f"{where}: process name {name!r} must be 1-32 letters, digits, '-' or '_'"
            )
        if name in RESERVED_NAMES:
            raise ValueError(f"{where}: {name!r} is reserved for the supervisor's own use")
        if name in processes:
            raise ValueError(f"{where}: process {name!r} is defined twice")
        if _INLINE_COMMENT_RE.search(command):
            raise ValueError(
                f"{where}: ';' or '#' after a space would end the command in supervisord's "
                "configuration; quote it differently"
            )
        processes[name] = command
    if not processes:
        raise ValueError(f"{source}: no process defined")
    return processes


def select_processes(
    processes: dict[str, str], names: list[str], *, embedded: bool
) -> dict[str, str]:
    """The processes to run: ``names`` (all by default), without the embedded Redis in the
    production profile."""
    unknown = [name for name in names if name not in processes]
    if unknown:
        raise ValueError(
            f"no process {', '.join(unknown)} in the Procfile (it has {', '.join(processes)})"
        )
    if not embedded:
        refused = [name for name in names if name in EMBEDDED_ONLY]
        if refused:
            raise ValueError(
                f"{', '.join(refused)}: embedded profile only (REDIS_URL is set: the production "
                "profile uses that Redis server)"
            )
    chosen = {name: processes[name] for name in (names or processes)}
    if not embedded:
        chosen = {name: cmd for name, cmd in chosen.items() if name not in EMBEDDED_ONLY}
    if not chosen:
        raise ValueError("no process to run")
    return chosen


# --- supervisord configuration -----------------------------------------------------------------


def _value(text: str | Path) -> str:
    """A value for supervisord's configuration: ``%`` is its expansion character."""
    value = str(text)
    if "\n" in value:
        raise ValueError(f"a supervisord setting cannot hold a line break: {value!r}")
    return value.replace("%", "%%")


def _section(title: str, options: dict[str, Any]) -> str:
    lines = [f"[{title}]", *(f"{key}={_value(value)}" for key, value in options.items())]
    return "\n".join(lines)


def render_config(
    processes: dict[str, str],
    *,
    var_dir: Path,
    base_dir: Path,
    python: str,
    socket_path: Path,
    options: ProcessOptions,
) -> str:
    """supervisord's configuration for ``processes`` (``{name: Procfile command}``)."""
    sections = [
        "; Written by `python manage.py supervise` from the Procfile at each start: edit the\n"
        "; Procfile (or the TRADEAPP_PROCESS_* settings), not this file.",
        _section(
            "supervisord",
            {
                "nodaemon": "true",
                "identifier": "tradeapp",
                # -n also logs to stdout; the file keeps the last few megabytes for later.
                "logfile": var_dir / SUPERVISORD_LOG,
                "logfile_maxbytes": "5MB",
                "logfile_backups": 2,
                "loglevel": "info",
                "pidfile": var_dir / "supervisord.pid",
                "childlogdir": var_dir,
                # Said so, supervisord does not warn that it runs as root (a container's user).
                **({"user": "root"} if os.geteuid() == 0 else {}),
            },
        ),
        _section("unix_http_server", {"file": socket_path, "chmod": "0700"}),
        _section("supervisorctl", {"serverurl": f"unix://{socket_path}"}),
        _section(
            "rpcinterface:supervisor",
            {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"},
        ),
    ]
    for name, command in processes.items():
        sections.append(
            _section(
                f"program:{name}",
                {
                    "command": f"/bin/sh -c {shlex.quote('exec ' + command)}",
                    "directory": base_dir,
                    # The embedded Redis first; stopped last.
                    "priority": 10 if name in EMBEDDED_ONLY else 100,
                    "autostart": "true",
                    "autorestart": "true",
                    "startsecs": options.start_seconds,
                    "startretries": options.start_retries,
                    "stopsignal": "TERM",
                    "stopwaitsecs": options.stop_seconds,
                    # SIGTERM to the program alone (a Celery worker then stops its pool
                    # itself, after its running tasks), SIGKILL to its whole process group.
                    "killasgroup": "true",
                    "redirect_stderr": "true",
                    "stdout_logfile": "NONE",
                    "stdout_events_enabled": "true",
                },
            )
        )
    grouped = [name for name in processes if name not in EMBEDDED_ONLY]
    if grouped:
        sections.append(_section(f"group:{GROUP}", {"programs": ",".join(grouped)}))
    width = max(len(name) for name in [*processes, EVENTS_LISTENER, LOGS_LISTENER])
    listener = {
        "directory": base_dir,
        "autostart": "true",
        "autorestart": "true",
        "startsecs": 1,
        "startretries": 10,
        "stopwaitsecs": 5,
        "stdout_logfile": "NONE",
    }
    sections.append(
        _section(
            f"eventlistener:{LOGS_LISTENER}",
            {
                **listener,
                "command": f"{shlex.quote(python)} -m tradeapp.supervise logs --width {width}",
                "events": "PROCESS_LOG",
                # Chunks of output waiting while the listener writes: room for bursts.
                "buffer_size": 10000,
                # Started first, stopped last: nobody's last words are lost.
                "priority": 1,
                # Its own output goes straight to the terminal, not through itself.
                "stderr_logfile": "/dev/stdout",
                "stderr_logfile_maxbytes": 0,
            },
        )
    )
    sections.append(
        _section(
            f"eventlistener:{EVENTS_LISTENER}",
            {
                **listener,
                "command": shlex.join([python, str(base_dir / "manage.py"), "process_events"]),
                "events": "PROCESS_STATE",
                "buffer_size": 1000,
                "priority": 2,
                "stderr_logfile": "NONE",
                "stderr_events_enabled": "true",
            },
        )
    )
    return "\n\n".join(sections) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare(
    processes: dict[str, str],
    *,
    var_dir: Path,
    base_dir: Path,
    socket_path: Path,
    state_file: Path,
    options: ProcessOptions,
) -> Path:
    """Write ``var/supervisord.conf`` for ``processes`` and forget the last run's restarts;
    refuse if a supervisord already runs on this var dir. Returns the configuration's path."""
    if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
        raise ValueError(
            f"the supervisor socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes "
            "(the limit of unix sockets): use a shorter TRADEAPP_VAR_DIR"
        )
    var_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        pid = client(f"unix://{socket_path}", timeout=2).supervisor.getPID()
        raise ValueError(
            f"supervisord (pid {pid}) already runs the platform of {var_dir}: stop it first "
            f"(Ctrl-C in its terminal, or kill -INT {pid})"
        )
    conf = var_dir / "supervisord.conf"
    _write_atomically(
        conf,
        render_config(
            processes,
            var_dir=var_dir,
            base_dir=base_dir,
            python=sys.executable,
            socket_path=socket_path,
            options=options,
        ),
    )
    state_file.unlink(missing_ok=True)
    return conf


def exec_supervisord(conf: Path) -> NoReturn:
    """Replace this process with ``supervisord -n -c conf``. Children find this virtualenv's
    commands first on PATH (as under `make run`) and write their output unbuffered."""
    bindir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", os.defpath)])
    env["PYTHONUNBUFFERED"] = "1"
    for fd in (1, 2):
        # supervisord writes its own log to fd 1 but reopens /dev/stdout for the listeners'
        # output: two file offsets into the same file when the output goes to a file (`make
        # run > log`), each overwriting the other's lines. Appending, both add at the end.
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    script = os.path.join(bindir, "supervisord")
    if os.access(script, os.X_OK):
        argv = [script, "-n", "-c", str(conf)]
    else:
        argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)  # noqa: S606 - supervisord of this virtualenv


# --- supervisord's XML-RPC interface -----------------------------------------------------------


class _TimedUnixConnection(UnixStreamHTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketfile)


class _TimedTransport(SupervisorTransport):
    """supervisor's own transport, with a timeout: a hung supervisord must not hang
    /healthz."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__(serverurl=f"unix://{socket_path}")

        def get_connection() -> _TimedUnixConnection:
            connection = _TimedUnixConnection("localhost", timeout=timeout)
            connection.socketfile = socket_path
            return connection

        self._get_connection = get_connection


def client(server_url: str, *, timeout: float = 2.0) -> xmlrpc.client.ServerProxy:
    """An XML-RPC client of supervisord at ``unix:///path.sock`` (``SUPERVISOR_SERVER_URL``)."""
    if not server_url.startswith("unix://"):
        raise ValueError(f"expected a unix:// supervisor URL, got {server_url!r}")
    transport = _TimedTransport(server_url.removeprefix("unix://"), timeout)
    return xmlrpc.client.ServerProxy("http://localhost", transport=transport)


# --- the restart record (var/processes.json) ---------------------------------------------------


def read_state(state_file: Path) -> dict[str, Any]:
    """The events listener's record; empty when there is none yet (or it is unreadable)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def overview(server_url: str, state_file: Path, *, timeout: float = 2.0) -> dict[str, Any]:
    """Every process supervisord runs, with its state, pid, uptime and restarts: ``ok`` when
    all are starting or running. Raises when supervisord does not answer."""
    infos = client(server_url, timeout=timeout).supervisor.getAllProcessInfo()
    recorded = read_state(state_file).get("processes", {})
    now = time.time()
    processes = []
    for info in infos:
        record = recorded.get(info["name"], {})
        up = info["statename"] in UP_STATES and info["pid"]
        retry_at = record.get("retry_at")
        processes.append(
            {
                "name": info["name"],
                "group": info["group"],
                "state": info["statename"],
                "pid": info["pid"] or None,
                "uptime_s": max(0, info["now"] - info["start"]) if up else None,
                "restarts": record.get("restarts", 0),
                "last_exit": record.get("last_exit"),
                "retry_in_s": (
                    round(max(0.0, retry_at - now), 1)
                    if retry_at and info["statename"] == "FATAL"
                    else None
                ),
            }
        )
    down = [f"{p['name']} ({p['state']})" for p in processes if p["state"] not in UP_STATES]
    result: dict[str, Any] = {"ok": not down, "processes": processes}
    if down:
        result["error"] = f"not running: {', '.join(down)}"
    return result


# --- the event listener protocol ---------------------------------------------------------------


def parse_tokens(text: str) -> dict[str, str]:
    """``key:value key:value`` (an event's header line, or a state event's payload)."""
    return dict(token.split(":", 1) for token in text.split() if ":" in token)


def listen(
    handle: Callable[[dict[str, str], bytes], None],
    *,
    on_idle: Callable[[], None] | None = None,
    idle_seconds: float = 1.0,
) -> None:
    """Serve supervisor's event listener protocol on stdin/stdout until supervisord closes
    stdin: READY, then per event its header line and payload, ``handle(headers, payload)``,
    then ``RESULT 2\\nOK``. ``on_idle`` runs at least every ``idle_seconds``.

    The protocol owns stdout: fd 1 is pointed at stderr, so a stray ``print`` cannot corrupt
    it. ``handle`` runs before the result is sent, so an event is sent again if this process
    dies meanwhile; its exceptions are logged and the event is still acknowledged (a rejected
    event would come back forever)."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    last_idle = time.monotonic()

    def idle() -> None:
        nonlocal last_idle
        last_idle = time.monotonic()
        if on_idle is not None:
            try:
                on_idle()
            except Exception:
                logger.exception("event listener: periodic work failed")

    while True:
        proto_out.write(b"READY\n")
        # supervisord sends one event, then waits for our result: nothing else can sit in
        # proto_in's buffer while select() looks at the file descriptor.
        while not select.select([proto_in], [], [], idle_seconds)[0]:
            idle()
        line = proto_in.readline()
        if not line:
            return
        headers = parse_tokens(line.decode("utf-8", "replace"))
        payload = proto_in.read(int(headers.get("len", 0)))
        try:
            handle(headers, payload)
        except Exception:
            logger.exception("event listener: %s failed", headers.get("eventname"))
        proto_out.write(b"RESULT 2\nOK")
        if time.monotonic() - last_idle >= idle_seconds:
            idle()


# --- the logs listener -------------------------------------------------------------------------


class LogRelay:
    """Prints each process's output line by line as ``name | line``.

    supervisord sends output in chunks as the process wrote it, so a line may come in pieces:
    the piece after a process's last newline waits for the rest (``flush_stale`` prints one
    that waited too long, a prompt without a newline)."""

    MAX_PARTIAL = 64 * 1024

    def __init__(self, out: BinaryIO, width: int) -> None:
        self.out = out
        self.width = width
        self.partial: dict[str, tuple[bytes, float]] = {}

    def _write(self, name: str, lines: list[bytes]) -> None:
        prefix = f"{name:<{self.width}} | ".encode()
        self.out.write(b"".join(prefix + line.rstrip(b"\r") + b"\n" for line in lines))
        self.out.flush()

    def feed(self, name: str, data: bytes) -> None:
        waiting, _ = self.partial.pop(name, (b"", 0.0))
        *lines, rest = (waiting + data).split(b"\n")
        if len(rest) > self.MAX_PARTIAL:
            lines.append(rest)
            rest = b""
        if lines:
            self._write(name, lines)
        if rest:
            self.partial[name] = (rest, time.monotonic())

    def flush_stale(self, older_than: float = 1.0) -> None:
        now = time.monotonic()
        for name, (rest, since) in list(self.partial.items()):
            if now - since >= older_than:
                del self.partial[name]
                self._write(name, [rest])

    def handle(self, headers: dict[str, str], payload: bytes) -> None:
        if not headers.get("eventname", "").startswith("PROCESS_LOG"):
            return
        head, _, data = payload.partition(b"\n")
        self.feed(parse_tokens(head.decode("utf-8", "replace")).get("processname", "?"), data)


# --- the events listener -----------------------------------------------------------------------


# "2026-12-08 00:14:42,724 WARN exited: worker (terminated by SIGKILL; not expected)"
_EXITED_LINE_RE = re.compile(
    rb" exited: (?P<name>[A-Za-z0-9_-]+) \((?P<detail>[^)\n]*?)(?:; (?:not )?expected)?\)\s*$",
    re.MULTILINE,
)
_EXIT_DETAIL_RE = re.compile(r"^(?:exit status (?P<status>-?\d+)|terminated by (?P<signal>\w+))")


class ExitLog:
    """Why processes exited, read from supervisord's own log (``exited: worker (terminated by
    SIGKILL; not expected)``): its events do not say, and by the time a listener could ask
    over XML-RPC the process has already been started again (which clears the status).

    supervisord writes the line before it sends the event, one line per ``EXITED`` or
    ``BACKOFF`` event, so the n-th line of a process belongs to its n-th exit event. Reading
    starts where this supervisord's run starts in the log (``supervisord started with pid
    N``), or at ``offset`` (kept in the listener's record across its own restarts)."""

    MAX_WAITING = 100

    def __init__(self, path: Path, *, supervisor_pid: int, offset: int | None = None) -> None:
        self.path = path
        self.reasons: dict[str, list[str]] = {}
        self.offset = offset if offset is not None else self._run_start(supervisor_pid)

    def _run_start(self, supervisor_pid: int) -> int:
        try:
            data = self.path.read_bytes()
        except OSError:
            return 0
        at = data.rfind(f" supervisord started with pid {supervisor_pid}\n".encode())
        return data.rfind(b"\n", 0, at) + 1 if at >= 0 else 0

    def reason(self, name: str) -> str | None:
        """The reason of ``name``'s next exit in the log (None if not logged)."""
        self._read()
        waiting = self.reasons.get(name)
        return waiting.pop(0) if waiting else None

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # rotated
                self.offset = 0
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for match in _EXITED_LINE_RE.finditer(complete):
            waiting = self.reasons.setdefault(match["name"].decode(), [])
            waiting.append(match["detail"].decode("utf-8", "replace"))
            del waiting[: -self.MAX_WAITING]


class ProcessMonitor:
    """What the ``events`` listener does with supervisord's ``PROCESS_STATE`` events.

    * An exit nobody asked for (``EXITED``, or ``BACKOFF``: it died before ``startsecs``) is
      logged, recorded as the process's ``last_exit`` and published as ``process.exited``.
    * The start that follows (``STARTING`` from ``EXITED``, ``BACKOFF`` or ``FATAL``) counts
      as a restart: logged, counted, published as ``process.restarted`` with the new pid.
    * ``FATAL`` (supervisor gave up after ``startretries``): the process is started again after
      ``retry_after`` seconds, doubling with each FATAL in a row up to ``retry_max``; staying up
      (``RUNNING``) resets the doubling. Published as ``process.fatal``.
    * Stops that were asked for (``STOPPING``, ``STOPPED``) only update the state.

    The record (restarts, last exit, pending retry, per process) is kept in ``state_file``,
    replaced atomically after every change, for /healthz and for this listener's own restart.
    Events that could not be published (Redis may be the process that died) are kept and sent
    again every tick for ``PENDING_FOR`` seconds.
    """

    PENDING_MAX = 100
    PENDING_FOR = 600.0

    def __init__(
        self,
        *,
        supervisor: xmlrpc.client.ServerProxy,
        state_file: Path,
        publish: Callable[[dict[str, Any]], Any],
        retry_after: float,
        retry_max: float,
        supervisor_pid: int,
        start_seconds: int,
        log_file: Path | None = None,
        own_name: str | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.start_seconds = start_seconds
        self.state_file = state_file
        self.publish = publish
        self.retry_after = retry_after
        self.retry_max = retry_max
        self.supervisor_pid = supervisor_pid
        self.pending: list[tuple[float, dict[str, Any]]] = []
        state = read_state(state_file)
        same_run = state.get("supervisor_pid") == supervisor_pid
        self.records: dict[str, dict[str, Any]] = state.get("processes", {}) if same_run else {}
        self.exit_log = (
            ExitLog(
                log_file,
                supervisor_pid=supervisor_pid,
                offset=state.get("log_offset") if same_run else None,
            )
            if log_file
            else None
        )
        if same_run and own_name:
            # A record of this run exists: this listener itself was started again.
            record = self._record(own_name)
            record["restarts"] += 1
            logger.warning("%s restarted (restart %d)", own_name, record["restarts"])
        self._save()

    def _record(self, name: str) -> dict[str, Any]:
        return self.records.setdefault(
            name,
            {"restarts": 0, "state": None, "pid": None, "last_exit": None, "exit_seen": None,
             "started_seen": None, "fatal_in_a_row": 0, "retry_at": None},
        )  # fmt: skip

    def _save(self) -> None:
        state = {
            "supervisor_pid": self.supervisor_pid,
            "processes": self.records,
            "log_offset": self.exit_log.offset if self.exit_log else None,
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.state_file, json.dumps(state, indent=1, sort_keys=True))

    def _info(self, group: str, name: str) -> dict[str, Any]:
        try:
            return self.supervisor.supervisor.getProcessInfo(f"{group}:{name}")
        except (OSError, xmlrpc.client.Error) as exc:
            logger.warning("could not ask supervisord about %s: %s", name, exc)
            return {}

    def _emit(self, payload: dict[str, Any]) -> None:
        self.pending.append((time.monotonic(), payload))
        del self.pending[: -self.PENDING_MAX]
        self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        while self.pending:
            since, payload = self.pending[0]
            if now - since > self.PENDING_FOR:
                logger.warning("event dropped after %.0f s unpublished: %s", now - since, payload)
                self.pending.pop(0)
                continue
            try:
                self.publish(payload)
            except Exception as exc:  # noqa: BLE001 - Redis down: kept, sent again next tick
                logger.warning("could not publish %s yet: %s", payload["type"], exc)
                return
            self.pending.pop(0)

    def on_event(self, headers: dict[str, str], payload: bytes) -> None:
        eventname = headers.get("eventname", "")
        if eventname.startswith("PROCESS_STATE_"):
            fields = parse_tokens(payload.decode("utf-8", "replace"))
            self.on_state(eventname.removeprefix("PROCESS_STATE_"), fields)

    def on_state(self, state: str, fields: dict[str, str]) -> None:
        name = fields.get("processname", "?")
        record = self._record(name)
        record["state"] = state
        record["group"] = fields.get("groupname", "?")
        now = time.time()
        if state in EXIT_STATES:
            self._exited(name, record, state, fields, now)
        elif state == "STARTING" and fields.get("from_state") in {"EXITED", "BACKOFF", "FATAL"}:
            self._restarted(name, record, now)
        elif state == "FATAL":
            self._fatal(name, record, now)
        else:
            if state == "STARTING":
                record["started_seen"] = now
            elif state == "RUNNING":
                record["fatal_in_a_row"] = 0
                record["pid"] = int(fields.get("pid", 0)) or record.get("pid")
            elif state == "STOPPED":
                record["retry_at"] = None
                record["pid"] = None
            self._save()

    @staticmethod
    def _base(name: str, record: dict[str, Any], now: float) -> dict[str, Any]:
        return {"process": name, "group": record["group"], "time_ms": int(now * 1000)}

    def _exited(
        self, name: str, record: dict[str, Any], state: str, fields: dict[str, str], now: float
    ) -> None:
        detail = self.exit_log.reason(name) if self.exit_log else None
        status = signal_name = None
        if detail and (match := _EXIT_DETAIL_RE.match(detail)):
            status = int(match["status"]) if match["status"] else None
            signal_name = match["signal"]
        if state == "BACKOFF":
            detail = f"{detail or 'exited'} before it was up ({self.start_seconds} s)"
        started = record.get("started_seen")
        pid = int(fields.get("pid", 0)) or record.get("pid")
        record["last_exit"] = {
            "time_ms": int(now * 1000), "state": state, "pid": pid, "exit_status": status,
            "signal": signal_name, "expected": state == "EXITED" and fields.get("expected") == "1",
            "detail": detail or "unknown", "ran_s": round(now - started, 1) if started else None,
        }  # fmt: skip
        record["exit_seen"] = now
        record["pid"] = None
        logger.warning(
            "%s (pid %s) exited unasked: %s, after %s s",
            name, pid, record["last_exit"]["detail"], record["last_exit"]["ran_s"],
        )  # fmt: skip
        self._save()
        self._emit({"type": "process.exited", **self._base(name, record, now),
                    **record["last_exit"], "restarts": record["restarts"]})  # fmt: skip

    def _restarted(self, name: str, record: dict[str, Any], now: float) -> None:
        record["started_seen"] = now
        record["restarts"] += 1
        record["retry_at"] = None
        pid = self._info(record["group"], name).get("pid") or None
        record["pid"] = pid
        down = round(now - record["exit_seen"], 1) if record.get("exit_seen") else None
        logger.warning(
            "%s restarted (pid %s, restart %d, %s s after it exited)",
            name, pid, record["restarts"], down,
        )  # fmt: skip
        self._save()
        self._emit({"type": "process.restarted", **self._base(name, record, now), "pid": pid,
                    "restarts": record["restarts"], "down_s": down})  # fmt: skip

    def _fatal(self, name: str, record: dict[str, Any], now: float) -> None:
        record["fatal_in_a_row"] += 1
        wait = min(self.retry_after * 2 ** (record["fatal_in_a_row"] - 1), self.retry_max)
        record["retry_at"] = now + wait
        logger.error(
            "%s keeps dying: supervisord gave up on it; starting it again in %.0f s", name, wait
        )
        self._save()
        self._emit({"type": "process.fatal", **self._base(name, record, now),
                    "restarts": record["restarts"], "retry_in_s": wait})  # fmt: skip

    def reconcile(self) -> None:
        """At the listener's start: a process already FATAL (while no listener ran) gets its
        retry scheduled."""
        try:
            infos = self.supervisor.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error) as exc:
            logger.warning("could not ask supervisord for its processes: %s", exc)
            return
        for info in infos:
            record = self._record(info["name"])
            record["group"] = info["group"]
            record["state"] = info["statename"]
            if info["statename"] == "FATAL" and not record.get("retry_at"):
                record["retry_at"] = time.time() + self.retry_after
        self._save()

    def tick(self) -> None:
        """Start the FATAL processes whose wait is over; send events kept while Redis was
        down."""
        now = time.time()
        for name, record in self.records.items():
            if not record.get("retry_at") or record["retry_at"] > now:
                continue
            try:
                self.supervisor.supervisor.startProcess(f"{record['group']}:{name}", False)
            except xmlrpc.client.Fault as exc:
                # ALREADY_STARTED (someone was quicker), SHUTDOWN_STATE (Ctrl-C), ...
                logger.info("not starting %s again: %s", name, exc.faultString)
                record["retry_at"] = None
            except OSError as exc:
                logger.warning("could not start %s again yet: %s", name, exc)
                continue
            else:
                logger.warning("starting %s again after supervisord gave up on it", name)
                record["retry_at"] = None
            self._save()
        self._flush()


# --- python -m tradeapp.supervise logs ---------------------------------------------------------


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tradeapp.supervise")
    commands = parser.add_subparsers(dest="command", required=True)
    logs = commands.add_parser("logs", help="the logs event listener of supervisord.conf")
    logs.add_argument("--width", type=int, default=9, help="width of the process name column")
    args = parser.parse_args(argv)
    if "SUPERVISOR_SERVER_URL" not in os.environ:
        parser.error("run by supervisord as an event listener (see var/supervisord.conf)")
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format=f"{LOGS_LISTENER:<{args.width}} | %(message)s"
    )
    relay = LogRelay(os.fdopen(os.dup(2), "wb"), args.width)

    def stop(*_: object) -> NoReturn:
        # Stopped last, when supervisord exits: print the lines still waiting for a newline.
        relay.flush_stale(older_than=0)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    listen(relay.handle, on_idle=relay.flush_stale, idle_seconds=0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
