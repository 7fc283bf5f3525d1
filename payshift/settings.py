"""Settings of Payshift's own project (the demo stack and a standalone deployment), read from the environment.

Reading this module has no side effects: it creates no folder and reads no `.env` (manage.py reads one, for
the commands a developer types; the test suite never does). Payshift's own settings (PAYSHIFT_*, the gateway
keys) are not here: the app reads them with their defaults from the environment (payment/conf.py), exactly as
it does inside a host project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from payment.conf import setting_default

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

# Databases, the embedded broker and collected static files live here; the entry points create it
# (payshift/paths.py), never an import of the settings.
VAR_DIR = Path(env.str("PAYSHIFT_VAR_DIR", default=str(BASE_DIR / "var")))

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="payshift-insecure-development-key-change-me")
# Old keys still accepted for signatures (customer links, sessions) while a rotation settles.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# TLS-only settings come from the environment so one build serves plain HTTP on loopback (docs/operations.md).
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "payment",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files from gunicorn, so the one-command start needs no web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "payshift.urls"
WSGI_APPLICATION = "payshift.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------------------
# SQLite by default (the embedded, zero-service setup); PostgreSQL through DATABASE_URL.
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'payshift.sqlite3'}")}
_db = DATABASES["default"]


def sqlite_options() -> dict[str, Any]:
    """Web server, Celery worker, beat and the Django Q cluster all write to one file: WAL lets readers
    run beside the writer, IMMEDIATE takes the write lock at BEGIN (no deadlock-prone lock upgrades), the
    busy timeout makes a burst wait instead of failing with "database is locked", and synchronous=FULL
    because in WAL mode NORMAL may lose the last commits on power loss, and we answer 200 only because
    the event is durable."""
    timeout = env.int("SQLITE_BUSY_TIMEOUT_SECONDS", default=30)
    return {
        "transaction_mode": "IMMEDIATE",
        "timeout": timeout,
        "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout={timeout * 1000};",
    }


def prepare_threshold(text: str) -> int | None:
    """DATABASE_PREPARE_THRESHOLD: the run from which a compiled statement is prepared, or "off" (None)."""
    if text.strip().lower() in ("off", "none", "false", ""):
        return None
    value = int(text)
    if value < 1:
        raise ImproperlyConfigured("DATABASE_PREPARE_THRESHOLD is a run count from 1, or off")
    return value


if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = sqlite_options()
else:
    _db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    # After a database restart a pooled connection is dead; check it before use instead of answering 503.
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
    # Payshift's compiled hot-path statements (payment/sql.py) bind on the server; from their Nth run on a
    # connection psycopg sends them as named prepared statements, which PostgreSQL parses and plans once:
    # about 40 % of its CPU per settled payment (bench/FINDINGS.md). Django's own queries bind on the client
    # and are never prepared. "off" behind a pooler that cannot keep prepared statements (PgBouncer in
    # transaction mode before 1.21, or without max_prepared_statements).
    _db["OPTIONS"].setdefault("prepare_threshold",
                              prepare_threshold(env.str("DATABASE_PREPARE_THRESHOLD", default="5")))
# The webhook view manages its own transactions; ATOMIC_REQUESTS would hold a transaction open while
# the broker is contacted.
_db["ATOMIC_REQUESTS"] = False

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

ADMINS = [tuple(a.split(":", 1)) for a in env.list("DJANGO_ADMINS", default=[])]  # "Name:email"
EMAIL_BACKEND = env.str("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DJANGO_DEFAULT_FROM_EMAIL", default="payshift@localhost")

# A hanging mail server must not hold a worker (Django's default is no timeout at all).
EMAIL_TIMEOUT = env.int("DJANGO_EMAIL_TIMEOUT", default=10)

# --- Celery -------------------------------------------------------------------------------------------
# Default: kombu's filesystem transport, an embedded broker that needs no server (laptops, demos).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=4)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Bounded time to hand an event to Celery before Django Q takes it (payment/queueing.py).
_PUBLISH_TIMEOUT = env.float("PAYSHIFT_BROKER_PUBLISH_TIMEOUT",
                             default=setting_default("PAYSHIFT_BROKER_PUBLISH_TIMEOUT"))
CELERY_BROKER_CONNECTION_TIMEOUT = _PUBLISH_TIMEOUT
CELERY_TASK_PUBLISH_RETRY = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection before and after EVERY task unless this is set: a
# new PostgreSQL connection (a server process) per webhook. payshift/celery.py recycles connections the way
# Django does for requests instead (CONN_MAX_AGE, health check, drop after an error). bench/ (issue 6).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1_000_000)
CELERY_TIMEZONE = "UTC"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu's default is ./control, wherever a process happens to start: keep it with the broker.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "socket_connect_timeout": _PUBLISH_TIMEOUT,
        "socket_timeout": _PUBLISH_TIMEOUT,
        # A task a killed worker held comes back after this; it must exceed the longest retry countdown.
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
        # Look for such orphaned messages every N seconds (kombu's default scan is only every ~100 s).
        "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
        "unacked_restore_throttle": 1,
        "retry_on_timeout": False,
        # Fail a publish on the first refused connect: kombu otherwise sleeps its 2 s retry interval first,
        # which stalled every web thread in flight when Redis died (bench/, issue 6). Worker consumers
        # reconnect with their own retry settings; the circuit and Django Q take over for publishers.
        "max_retries": 0,
        "max_connections": 50,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
if CELERY_RESULT_BACKEND and CELERY_RESULT_BACKEND.startswith(("redis://", "rediss://")):
    # Results are never read (every publish passes ignore_result), but a configured Redis backend is still
    # contacted by Celery code paths; its defaults would block a caller on a dead Redis: a 120 s socket
    # timeout, no connect timeout, and 20 pub/sub reconnect tries 1 s apart (~19 s). Bound it like the
    # broker, and fail at once instead of retrying (docs/reliability.md "Redis down with a result backend").
    CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = _PUBLISH_TIMEOUT
    CELERY_REDIS_SOCKET_TIMEOUT = _PUBLISH_TIMEOUT
    CELERY_REDIS_RETRY_ON_TIMEOUT = False
    CELERY_RESULT_BACKEND_ALWAYS_RETRY = False
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": {"max_retries": 0}}
# Beat's entries come from the app itself (payment/periodic.py), as they do in a host project.

# --- Django Q (the fallback queue): ORM broker so it works whenever the database does ----------------------
Q_CLUSTER = {
    "name": "payshift",
    "orm": "default",
    "workers": env.int("Q_CLUSTER_WORKERS", default=2),
    "timeout": 120,
    "retry": 300,
    "max_attempts": 1,
    "poll": env.float("Q_CLUSTER_POLL", default=0.5),
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "label": "Django Q",
}

# --- Logging ------------------------------------------------------------------------------------------------
PAYMENT_LOG_FILE = env.str("PAYMENT_LOG_FILE", default=str(BASE_DIR / "payment.log"))
PAYMENT_LOG_MAX_BYTES = env.int("PAYMENT_LOG_MAX_BYTES", default=20 * 1024 * 1024)
LOG_LEVEL = env.str("PAYSHIFT_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # One JSON object a line: grep-able and machine-readable; fields come from `extra=`.
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level"},
        },
        "console": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console"},
        # Size-rotated by default. Several processes (web workers, Celery, the Q cluster) share the file:
        # in production set PAYMENT_LOG_MAX_BYTES=0 to get a WatchedFileHandler and rotate with logrotate,
        # which no single process can do safely for the others.
        "payment_file": (
            {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": PAYMENT_LOG_FILE,
                "maxBytes": PAYMENT_LOG_MAX_BYTES,
                "backupCount": env.int("PAYMENT_LOG_BACKUP_COUNT", default=5),
                "formatter": "json",
            }
            if PAYMENT_LOG_MAX_BYTES
            else {"class": "logging.handlers.WatchedFileHandler", "filename": PAYMENT_LOG_FILE, "formatter": "json"}
        ),
    },
    "loggers": {
        "payment": {"handlers": ["console", "payment_file"], "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}
