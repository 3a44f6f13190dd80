"""What a run does (full, --quick, --smoke) and the environment every child process gets."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.procs import REPO

DOCS_REPORT = REPO / "docs" / "PERFORMANCE.md"
PAGE_SIZE = 100  # the sync's page size (SYNC_PAGE_SIZE), also the API's maximum
SIM_KEY = "sk-sim-bench"
VIEWER = ("bench-viewer", "bench-viewer-pass-1729")
OPERATOR = ("bench-operator", "bench-operator-pass-1729")
PG_DATABASE = "bench_dashboard"


@dataclass(frozen=True)
class Options:
    mode: str = "full"
    batches: int = 10_000
    seed: int = 7
    cancel_delay: float = 3.0
    created: int = 5  # batches created upstream before the incremental sync
    viewers: int = 50
    window: float = 60.0  # seconds per upstream-vs-viewers window
    think: float = 1.0  # a viewer's pause between two rounds: one poll interval
    settle: float = 6.0  # pause before each window, so both start with a stale mirror
    samples: int = 300  # sequential requests per page for the latency benchmark
    warmup: int = 30
    cancel_trials: int = 3
    query_rows: tuple[int, int] = (10, 1000)
    poll_interval: int = 1
    refresh_interval: int = 5
    workers: int = 2
    database_url: str = ""
    cache_url: str = ""
    report: Path | None = None
    keep: bool = False

    @property
    def command(self) -> str:
        flags = {"quick": " --quick", "smoke": " --smoke"}.get(self.mode, "")
        extra = ""
        if self.database_url:
            extra += f" --database-url {self.database_url}"
        if self.cache_url:
            extra += f" --cache-url {self.cache_url}"
        return f".venv/bin/python bench/run.py{flags}{extra}"


PRESETS: dict[str, dict[str, object]] = {
    "full": {},
    "quick": {"viewers": 10, "window": 10.0, "samples": 100, "warmup": 10, "cancel_trials": 2},
    # Tiny and fast, so that the test suite can run the whole thing (tests/test_bench_smoke.py).
    "smoke": {
        "batches": 200,
        "viewers": 2,
        "window": 2.0,
        "settle": 1.0,
        "samples": 20,
        "warmup": 5,
        "cancel_trials": 1,
        "cancel_delay": 1.0,
        "query_rows": (10, 100),
    },
}


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the dashboard against a simulated upstream; writes docs/PERFORMANCE.md.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="10 viewers, 10 s windows, fewer samples")
    size.add_argument("--smoke", action="store_true", help="tiny run for the test suite; needs no docs")
    parser.add_argument("--batches", type=int, help="batches upstream (default 10000)")
    parser.add_argument("--viewers", type=int, help="concurrent viewers (default 50)")
    parser.add_argument("--seconds", type=float, dest="window", help="seconds per viewer window (default 60)")
    parser.add_argument("--samples", type=int, help="sequential requests per page for latency (default 300)")
    parser.add_argument("--seed", type=int, help="simulator seed (default 7)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--database-url",
        default="",
        help="PostgreSQL server to use instead of SQLite, e.g. postgres://postgres@127.0.0.1:5432/postgres; "
        f"the run (re)creates a database named {PG_DATABASE} there",
    )
    parser.add_argument("--cache-url", default="", help="e.g. redis://127.0.0.1:6379/2 (flushed at start)")
    parser.add_argument(
        "--report",
        type=Path,
        help="where to write the report (default docs/PERFORMANCE.md for a full run, the run's "
        "directory for --quick and --smoke)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, databases)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    options = replace(Options(mode=mode), **PRESETS[mode])  # type: ignore[arg-type]
    overrides = {
        name: getattr(args, name)
        for name in ("batches", "viewers", "window", "samples", "seed", "workers")
        if getattr(args, name) is not None
    }
    return replace(
        options,
        **overrides,
        database_url=args.database_url,
        cache_url=args.cache_url,
        report=args.report,
        keep=args.keep,
    )


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


# Variables of the developer's shell that would point the run at something else.
_INHERITED_OUT = ("DATABASE_URL", "CACHE_URL", "DJANGO_SETTINGS_MODULE", "UPSTREAM_", "OPENAI_", "TEST_")


def child_env(options: Options, workdir: Path, database_url: str, sim_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_OUT)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings_bench",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "STATIC_MANIFEST": "false",
            "BENCH_STATIC_ROOT": str(workdir / "static"),
            "DATABASE_URL": database_url,
            "CACHE_URL": options.cache_url or "locmemcache://",
            "OPENAI_API_KEY": SIM_KEY,
            "OPENAI_BASE_URL": sim_url,
            "UPSTREAM_ACCOUNTS": "",
            "SYNC_ON_DEMAND": "true",
            "REFRESH_INTERVAL": str(options.refresh_interval),
            "POLL_INTERVAL": str(options.poll_interval),
            # A local .env must not turn these on for a plain-HTTP run on 127.0.0.1.
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "REMOTE_USER_HEADER": "",
            "LOG_LEVEL": "INFO",  # the refresh cycles are read back from gunicorn's log
            "TIME_ZONE": "UTC",  # ... whose times are then in UTC
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
