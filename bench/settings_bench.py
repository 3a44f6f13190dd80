"""The project's settings plus a trivial view to measure the floor against (`/bench/ping`).

Django reads ROOT_URLCONF only from settings, so the benchmark selects this module with
DJANGO_SETTINGS_MODULE=bench.settings_bench instead of touching the app's own URLconf.
"""

from __future__ import annotations

import os
from pathlib import Path

from dashboard.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls_bench"
# Static files are not measured; a per-run directory keeps whitenoise from warning about a missing one.
STATIC_ROOT = Path(os.environ.get("BENCH_STATIC_ROOT") or STATIC_ROOT)  # noqa: F405
