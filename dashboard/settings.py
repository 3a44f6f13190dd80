"""Settings, all from the environment (and an optional `.env`); see `.env.example`.

Defaults are safe for production: DEBUG is off and SECRET_KEY must be given.
`./dev demo` sets what the local demo needs (SECRET_KEY included).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from batches.accounts import load_accounts

BASE_DIR = Path(__file__).resolve().parent.parent


class _Env(environ.Env):
    """environ.Env whose parse errors name the variable (its own ValueError does not)."""

    def get_value(self, var, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().get_value(var, *args, **kwargs)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{var} is malformed ({exc}); see .env.example.") from None


env = _Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _required(name: str, hint: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ImproperlyConfigured(f"{name} is not set: {hint}")
    return value


def _parse(name: str, parser, default: str):  # type: ignore[no-untyped-def]
    """Parse a URL-shaped variable, naming the variable when it is malformed."""
    raw = os.environ.get(name) or default
    try:
        _ = urlsplit(raw).port  # a port that is not a number raises here, not at the first use
        return parser(raw)
    except Exception as exc:
        raise ImproperlyConfigured(f"{name} is malformed ({exc}); see .env.example.") from None


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _required("SECRET_KEY", "set a long random value (./dev demo makes its own).")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "axes",
    "batches",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "batches.auth.AuthenticationMiddleware",
    "batches.auth.RemoteUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # An htmx GET refused for want of a session or a role takes the page along (login, or 403).
    "batches.auth.HtmxAccessMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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
                "django.template.context_processors.csp",
                "batches.context_processors.dashboard",
            ],
        },
    },
]


def _db_url_config(url: str) -> dict:  # type: ignore[type-arg]
    config = env.db_url_config(url)
    # django-environ passes an unknown scheme through as the ENGINE; Django would only fail on it
    # at the first query, without naming the variable.
    if "." not in config.get("ENGINE", ""):
        raise ValueError(f"unknown scheme {urlsplit(url).scheme!r}, use postgres:// or sqlite:///")
    return config


# SQLite by default; PostgreSQL for deployments with several instances.
DATABASES = {
    "default": _parse("DATABASE_URL", _db_url_config, f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # IMMEDIATE makes writers queue for the lock instead of failing mid-transaction,
            # which the serialized audit chain and concurrent cancels depend on.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
# Persistent connections, SQLite included: opening one (with its PRAGMAs) for every request is a
# large share of what a page served from the cache costs.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))

# Local memory by default; Redis when several instances share the work.
CACHES = {"default": _parse("CACHE_URL", env.cache_url_config, "locmemcache://")}

# Sessions in the database only, each read in one query with its user and permissions; a
# process-local cache would keep a session alive in other workers after a logout.
SESSION_ENGINE = "batches.sessions"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "batch_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env.bool("STATIC_MANIFEST", default=not DEBUG)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security --------------------------------------------------------------------------------
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# "HTTP_X_FORWARDED_PROTO,https" when a TLS-terminating proxy sets that header.
_proxy_ssl = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if _proxy_ssl:
    if len(_proxy_ssl) != 2:
        raise ImproperlyConfigured(
            "SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. HTTP_X_FORWARDED_PROTO,https."
        )
    SECURE_PROXY_SSL_HEADER = (_proxy_ssl[0], _proxy_ssl[1])

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# --- The product ------------------------------------------------------------------------------
UPSTREAM_ACCOUNTS = load_accounts(os.environ)
UPSTREAM_CONNECT_TIMEOUT = env.float("UPSTREAM_CONNECT_TIMEOUT", default=5.0)
UPSTREAM_READ_TIMEOUT = env.float("UPSTREAM_READ_TIMEOUT", default=30.0)
UPSTREAM_MAX_RETRIES = env.int("UPSTREAM_MAX_RETRIES", default=2)

# The worker syncs every SYNC_INTERVAL seconds; a page request triggers a background refresh
# when the mirror is older than REFRESH_INTERVAL.
SYNC_INTERVAL = env.float("SYNC_INTERVAL", default=30.0)
REFRESH_INTERVAL = env.float("REFRESH_INTERVAL", default=15.0)
SYNC_ON_DEMAND = env.bool("SYNC_ON_DEMAND", default=True)
SYNC_PAGE_SIZE = env.int("SYNC_PAGE_SIZE", default=100)
POLL_INTERVAL = env.int("POLL_INTERVAL", default=5)
STUCK_AFTER_MINUTES = env.int("STUCK_AFTER_MINUTES", default=30)
FINALIZING_STUCK_AFTER_MINUTES = env.int("FINALIZING_STUCK_AFTER_MINUTES", default=60)
CANCELLING_STUCK_AFTER_MINUTES = env.int("CANCELLING_STUCK_AFTER_MINUTES", default=15)
CANCEL_REASON_MAX_LENGTH = env.int("CANCEL_REASON_MAX_LENGTH", default=500)
# The list page's results (tabs, summary, table, pager) are cached this long (s) per filter, role
# and mirror version, so a change to the mirror shows at once; 0 turns the cache off. Relative
# times in a cached page can lag by as much. The price table is cached PRICES_CACHE_SECONDS (s)
# per process; an edit in the admin clears it at once in the process that made it (all of them
# with a shared cache such as Redis).
LIST_CACHE_SECONDS = env.int("LIST_CACHE_SECONDS", default=15)
PRICES_CACHE_SECONDS = env.int("PRICES_CACHE_SECONDS", default=60)
# /healthz?strict=1 answers 503 when an account has not synced successfully for this long (s).
HEALTHZ_MAX_SYNC_AGE = env.int("HEALTHZ_MAX_SYNC_AGE", default=600)
# /metrics (Prometheus) answers `Authorization: Bearer <METRICS_TOKEN>` (empty: no token works)
# and clients whose address (batches.auth.client_ip) is in METRICS_ALLOWED_IPS (addresses or networks).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
for _entry in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_entry!r} is not an address or network.") from None
# The dashboard's public address (https://batches.example.com), for links in webhook messages;
# empty: the messages carry no link.
DASHBOARD_URL = env.str("DASHBOARD_URL", default="").rstrip("/")
_dashboard = urlsplit(DASHBOARD_URL)
if DASHBOARD_URL and (_dashboard.scheme not in ("http", "https") or not _dashboard.hostname):
    raise ImproperlyConfigured("DASHBOARD_URL must be an http(s) URL, e.g. https://batches.example.com.")
# Webhooks to private, loopback and link-local addresses are refused unless this is on.
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)

# Single sign-on behind an authenticating proxy: the header that carries the user name,
# e.g. HTTP_X_REMOTE_USER. Empty (the default) means the header is ignored.
REMOTE_USER_HEADER = env.str("REMOTE_USER_HEADER", default="")
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "batches.auth.ModelBackend"]
if REMOTE_USER_HEADER:
    AUTHENTICATION_BACKENDS.append("batches.auth.RemoteUserBackend")
# The header a trusted proxy sets to the client address (e.g. HTTP_X_FORWARDED_FOR); empty
# means the socket address is recorded. Never trusted unless configured.
CLIENT_IP_HEADER = env.str("CLIENT_IP_HEADER", default="")

# Login attempts are limited per user name and client address (django-axes).
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.int("LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "batches.auth.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "batches": {
            "handlers": ["console"],
            "level": env.str("LOG_LEVEL", default="INFO"),
            "propagate": False,
        },
    },
}
