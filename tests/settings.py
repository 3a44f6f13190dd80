"""The project's own settings, with the environment a test run needs."""

from __future__ import annotations

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-not-for-production-0123456789")
os.environ.setdefault("STATIC_MANIFEST", "false")
os.environ.setdefault("SYNC_ON_DEMAND", "false")
# The database rolls back between tests, the locmem cache does not: a list page or price table
# cached by one test must not show up in the next. Tests of these caches turn them on.
os.environ.setdefault("LIST_CACHE_SECONDS", "0")
os.environ.setdefault("PRICES_CACHE_SECONDS", "0")

from dashboard.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory, so that live_server, background sync threads and the test share one
    # database; one per process, so that parallel runs do not collide.
    import tempfile

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"batch-dashboard-test-{os.getpid()}.sqlite3")
    }

# Serve static files straight from the app folders: the tests do not run collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
