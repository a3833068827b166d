"""fleetstatus settings: everything comes from the environment, with embedded defaults.

No variables at all gives the laptop setup: SQLite in ./var and a Celery broker on the local
filesystem (no server needed). DATABASE_URL switches to PostgreSQL (psycopg 3), REDIS_URL to Redis
for the Celery broker, the cache and the live heartbeat store.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
import dj_email_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLEETSTATUS_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "django-insecure-fleetstatus-development-only"

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "axes",
    "csp",
    "fleets",
    "devices",
    "readapi",
    "notifications",
]

MIDDLEWARE = [
    # Response-header middleware first: the device API's edge (devices/api/edge.py) gives its answers
    # the headers of those listed before its report dispatch, which sends PATCH /device/v3/state
    # straight to its view, before sessions, auth, CSRF, messages, axes.
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "devices.api.edge.StateReportDispatchMiddleware",
    "fleetstatus.middleware.RejectNulInQueryMiddleware",
    "fleetstatus.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fleetstatus.urls"

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
                "devices.context_processors.dashboard",
            ],
        },
    },
    {
        # The hot fragments (table rows, history rows, fleet cards) and the pieces they share with every
        # page (badge, icons, times): Django's engine is several times slower at them
        # (python -m benchmarks.fragments --django).
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "NAME": "jinja2",
        "DIRS": [BASE_DIR / "templates" / "jinja2"],
        "APP_DIRS": False,
        "OPTIONS": {"environment": "fleetstatus.jinja2.environment"},
    },
]

WSGI_APPLICATION = "fleetstatus.wsgi.application"

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # Persistent connections: a new PostgreSQL connection per request costs more than the
    # heartbeat request itself (README, Performance).
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("CONN_MAX_AGE", 600), conn_health_checks=True)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a health check that polls the socket instead of a SELECT 1 per
        # request (fleetstatus/db/postgresql/base.py).
        _db["ENGINE"] = "fleetstatus.db.postgresql"
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "fleetstatus.sqlite3",
        # web + worker + beat share one file: WAL lets readers and the writer work at once,
        # IMMEDIATE takes the write lock up front so transactions wait instead of failing
        # with "database is locked" half-way through.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
if os.environ.get("FLEETSTATUS_TEST_DB"):
    # Lets several test runs share one PostgreSQL server without dropping each other's database.
    _db.setdefault("TEST", {})["NAME"] = os.environ["FLEETSTATUS_TEST_DB"]
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache and Celery -----------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # The filesystem transport needs no server: the demo's web, worker and beat exchange
    # messages through files under var/broker.
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Broadcast (pidbox) exchanges; the default is ./control in the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }

# The Redis of the live state (heartbeat store and device cache, devices/live/): REDIS_URL unless
# set; `redis+cluster://host:port[,host:port...]` makes it a Redis Cluster. The Celery broker stays
# on REDIS_URL: Celery's Redis transport cannot use a cluster.
FLEETSTATUS_LIVE_REDIS_URL = os.environ.get("FLEETSTATUS_LIVE_REDIS_URL", "")
# Shards of the live state (each one hash slot of a cluster) and sweep tasks per interval (each
# sweeps a group of shards). Changing the shard count needs the live state emptied (devices/live/redis.py).
FLEETSTATUS_HEARTBEAT_SHARDS = env_int("FLEETSTATUS_HEARTBEAT_SHARDS", 16)
FLEETSTATUS_SWEEP_TASKS = env_int("FLEETSTATUS_SWEEP_TASKS", 4)
if not 1 <= FLEETSTATUS_HEARTBEAT_SHARDS <= 4096 or not 1 <= FLEETSTATUS_SWEEP_TASKS:
    raise ImproperlyConfigured("FLEETSTATUS_HEARTBEAT_SHARDS must be 1..4096, FLEETSTATUS_SWEEP_TASKS at least 1")

CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- fleetstatus ------------------------------------------------------------------------------
FLEETSTATUS_DEFAULT_POLL_INTERVAL = env_int("FLEETSTATUS_DEFAULT_POLL_INTERVAL", 600)
FLEETSTATUS_MIN_POLL_INTERVAL = env_int("FLEETSTATUS_MIN_POLL_INTERVAL", FLEETSTATUS_DEFAULT_POLL_INTERVAL)
FLEETSTATUS_SWEEP_INTERVAL = env_int("FLEETSTATUS_SWEEP_INTERVAL", 10)
if FLEETSTATUS_MIN_POLL_INTERVAL < 1 or FLEETSTATUS_DEFAULT_POLL_INTERVAL < 1 or FLEETSTATUS_SWEEP_INTERVAL < 1:
    raise ImproperlyConfigured("poll and sweep intervals must be positive")
# Heartbeat deadline = last fetch + interval x this factor (tolerance for jitter; docs/design.md, Heartbeats and staleness).
FLEETSTATUS_HEARTBEAT_TOLERANCE = 1.5
# Seconds a device's cached fetch configuration lives in Redis (devices/live/devcache.py; 0 = no cache).
# A device re-reads the database once per this period; a lost invalidation heals within it.
FLEETSTATUS_DEVICE_CACHE_TTL = env_int("FLEETSTATUS_DEVICE_CACHE_TTL", 6 * 3600)
# How long status transitions are kept (days) before the housekeeping task prunes them.
FLEETSTATUS_TRANSITION_RETENTION_DAYS = env_int("FLEETSTATUS_TRANSITION_RETENTION_DAYS", 90)

# Read API (readapi/): requests per token per window, shared by every process through the cache.
FLEETSTATUS_API_THROTTLE_REQUESTS = env_int("FLEETSTATUS_API_THROTTLE_REQUESTS", 20)
FLEETSTATUS_API_THROTTLE_SECONDS = env_int("FLEETSTATUS_API_THROTTLE_SECONDS", 1)
# /metrics answers 404 unless this is set, and 401 without it as a Bearer token.
FLEETSTATUS_METRICS_TOKEN = os.environ.get("FLEETSTATUS_METRICS_TOKEN", "")
# Counters are buffered per process and sent to Redis at most this many seconds later (fleetstatus/metrics.py).
FLEETSTATUS_METRICS_FLUSH_SECONDS = float(os.environ.get("FLEETSTATUS_METRICS_FLUSH_SECONDS", "1"))

# --- Notifications (docs/notifications.md) ----------------------------------------------------------
# Changes for one channel within this window go out as one message.
FLEETSTATUS_NOTIFY_GROUP_SECONDS = env_int("FLEETSTATUS_NOTIFY_GROUP_SECONDS", 10)
# How often beat runs the dispatcher.
FLEETSTATUS_NOTIFY_TICK_SECONDS = env_int("FLEETSTATUS_NOTIFY_TICK_SECONDS", 2)
# A delivery is retried (exponential backoff) for this long before it is marked failed.
FLEETSTATUS_NOTIFY_RETRY_HOURS = env_int("FLEETSTATUS_NOTIFY_RETRY_HOURS", 25)
# Seconds a sender owns a delivery; a worker that died mid-send leaves it to be re-sent after this.
FLEETSTATUS_NOTIFY_LEASE_SECONDS = env_int("FLEETSTATUS_NOTIFY_LEASE_SECONDS", 60)
FLEETSTATUS_NOTIFY_TIMEOUT_SECONDS = env_int("FLEETSTATUS_NOTIFY_TIMEOUT_SECONDS", 10)
# Webhooks to loopback/private/link-local addresses are refused unless this is on (LAN installations, tests).
FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE = env_bool("FLEETSTATUS_WEBHOOK_ALLOW_PRIVATE", False)
# The dashboard's address, for links in messages.
FLEETSTATUS_BASE_URL = os.environ.get("FLEETSTATUS_BASE_URL", "http://localhost:8000").rstrip("/")

# Email (notification channels with mailto: targets): EMAIL_URL such as
# smtp://user:password@mail.example.com:587/?tls=True, or console:// (the default) / locmem://.
EMAIL_URL = os.environ.get("EMAIL_URL", "console://")
_email = dj_email_url.parse(EMAIL_URL)
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _email["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = _email["EMAIL_USE_TLS"]
EMAIL_USE_SSL = _email["EMAIL_USE_SSL"]
EMAIL_TIMEOUT = _email["EMAIL_TIMEOUT"] or 30
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "fleetstatus@localhost")

# Beat: with Redis, only the beat holding a lock in Redis schedules (fleetstatus/celery.py,
# LockedScheduler), renewed every loop; a standby beat on another machine takes over once the active
# one stops renewing it: within the lock's time to live + one loop, kept at two sweep intervals.
if REDIS_URL:
    CELERY_BEAT_SCHEDULER = "fleetstatus.celery:LockedScheduler"
    CELERY_BEAT_MAX_LOOP_INTERVAL = max(FLEETSTATUS_SWEEP_INTERVAL / 4, 0.5)
    FLEETSTATUS_BEAT_LOCK_TTL = 2 * FLEETSTATUS_SWEEP_INTERVAL - CELERY_BEAT_MAX_LOOP_INTERVAL

# One sweep task per group of shards, so that several workers sweep in parallel.
_SWEEP_GROUPS = [
    list(range(FLEETSTATUS_HEARTBEAT_SHARDS))[g :: min(FLEETSTATUS_SWEEP_TASKS, FLEETSTATUS_HEARTBEAT_SHARDS)]
    for g in range(min(FLEETSTATUS_SWEEP_TASKS, FLEETSTATUS_HEARTBEAT_SHARDS))
]
CELERY_BEAT_SCHEDULE = {
    **{
        f"sweep-{group[0]}": {
            "task": "devices.tasks.sweep_shards",
            "schedule": float(FLEETSTATUS_SWEEP_INTERVAL),
            "args": (group,),
            # A sweep message that waited longer than one interval is useless: the next one is due.
            "options": {"expires": float(FLEETSTATUS_SWEEP_INTERVAL)},
        }
        for group in _SWEEP_GROUPS
    },
    # Device counts per fleet and status (fleets/counts.py): fold the triggers' deltas.
    "fold-status-counts": {
        "task": "fleets.tasks.fold_status_counts",
        "schedule": float(FLEETSTATUS_SWEEP_INTERVAL),
        "options": {"expires": float(FLEETSTATUS_SWEEP_INTERVAL)},
    },
    # Housekeeping (devices/sweep.py): allowance re-check for every organization, history pruning.
    "reconcile-frozen": {
        "task": "devices.tasks.reconcile_frozen",
        "schedule": 300.0,
        "options": {"expires": 300.0},
    },
    "prune-transitions": {
        "task": "devices.tasks.prune_transitions",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    # Fleets' count history (fleets/history.py): hourly roll-up after a week, pruned with the transitions.
    "compact-fleet-history": {
        "task": "fleets.tasks.compact_fleet_history",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    # Notifications (notifications/engine.py): evaluate the outbox, group, hand due deliveries to workers.
    "notify-dispatch": {
        "task": "notifications.tasks.dispatch",
        "schedule": float(FLEETSTATUS_NOTIFY_TICK_SECONDS),
        "options": {"expires": float(FLEETSTATUS_NOTIFY_TICK_SECONDS)},
    },
    "notify-prune": {
        "task": "notifications.tasks.prune",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}

# --- Auth -------------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = 1  # hours
AXES_RESET_ON_SUCCESS = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "devices:list"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Security (production defaults; DEBUG relaxes the transport ones) --------------------------
SECURE = not DEBUG and env_bool("FLEETSTATUS_HTTPS", True)
SESSION_COOKIE_SECURE = SECURE
CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = SECURE and env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000) if SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_REDIRECT_EXEMPT = [r"^device/", r"^services/", r"^healthz$"]

# Content-Security-Policy (django-csp): scripts and styles only from this server, no inline script.
# htmx is served from static/ and configured with a <meta> tag (its indicator <style> is off).
# Inline style *attributes* are allowed (bar widths, progress) but not inline <style> or <script>.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-elem": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- I18N / static ----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
