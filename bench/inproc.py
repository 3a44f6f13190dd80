"""The measurements that run inside Django: `python -m bench.inproc --out FILE COMMAND ...`.

Run by bench/run.py as a subprocess with the run's environment (DJANGO_SETTINGS_MODULE,
DATABASE_URL, ...), so each command sees exactly the database it is pointed at. Each command
writes one JSON object to --out.

- users:        create the viewer (group Viewers) and the operator (group Operators)
- state:        what the mirror holds: counts by status, the active batches, some ids to look at
- queries:      fill a fresh database with N batches and N audit entries, count each page's queries
- profile:      time one page through Django's test client, profile it, time its SQL
- sync-profile: one refresh cycle against the running simulator, under cProfile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import django

from bench.web import POLL_VERSION

PAGE = 100


# --- users ---------------------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth.models import Group, User

    made = {}
    for spec, group in ((args.viewer, "Viewers"), (args.operator, "Operators")):
        username, password = spec.split(":", 1)
        user = User.objects.create_user(username, f"{username}@bench.invalid", password)
        user.groups.add(Group.objects.get(name=group))
        made[username] = group
    return {"users": made}


# --- state ---------------------------------------------------------------------------------------


def cmd_state(args: argparse.Namespace) -> dict[str, Any]:
    from django.db.models import Count

    from batches.models import TERMINAL_STATUSES, AuditEntry, Batch, BatchSample, SyncState

    newest = ("-created_at", "-id")
    by_status = dict(Batch.objects.order_by().values_list("status").annotate(n=Count("id")))
    active = {
        batch_id: [status, completed, failed]
        for batch_id, status, completed, failed in Batch.objects.exclude(status__in=TERMINAL_STATUSES)
        .order_by(*newest)
        .values_list("batch_id", "status", "request_completed", "request_failed")
    }
    completed = Batch.objects.filter(status="completed").order_by(*newest).values_list("batch_id", flat=True)
    sync = {
        s.account: {
            "import_complete": s.import_complete,
            "imported": s.imported,
            "last_cycle_requests": s.last_cycle_requests,
            "last_cycle_seconds": s.last_cycle_seconds,
            "last_error": s.last_error,
        }
        for s in SyncState.objects.all()
    }
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "active": active,
        "completed_ids": list(completed[:3]),
        "samples": BatchSample.objects.count(),
        "audit_entries": AuditEntry.objects.count(),
        "sync": sync,
    }


# --- queries per page ------------------------------------------------------------------------------


def _fill(rows: int, seed: int) -> list[str]:
    """Mirror `rows` simulated batches the way a sync stores them; the ids, newest first."""
    from batches.simulator import Simulator
    from batches.sync import store_batches

    sim = Simulator(batches=rows, seed=seed)
    after: str | None = None
    while True:
        page = sim.list_batches(after=after, limit=PAGE)
        store_batches("default", page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    return sim.batch_ids()


def _fill_audit(rows: int, ids: list[str], operator: Any) -> None:
    """`rows` audit entries: accepted cancels, each followed by where it ended (REACHED)."""
    from batches import audit
    from batches.models import AuditEntry

    for i in range(rows):
        common = {"account": "default", "batch_id": ids[(i // 2) % len(ids)], "status_before": "in_progress"}
        if i % 2 == 0:
            audit.append(
                event=AuditEntry.Event.CANCEL,
                outcome=AuditEntry.Outcome.ACCEPTED,
                actor=operator,
                reason=f"bench entry {i}",
                client_ip="127.0.0.1",
                user_agent="bench",
                status_after="cancelling",
                **common,
            )
        else:
            audit.append(
                event=AuditEntry.Event.REACHED,
                outcome=AuditEntry.Outcome.OBSERVED,
                status_after="cancelled",
                **common,
            )


def _count(client: Any, path: str, htmx: bool) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    headers = {"HX-Request": "true"} if htmx else {}
    client.get(path, headers=headers)  # warm: the filter menus and the list page are cached after one view
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path, headers=headers)
    return {
        "path": path,
        "status": response.status_code,
        "queries": len(ctx.captured_queries),
        "sql": [q["sql"] for q in ctx.captured_queries],
    }


def cmd_queries(args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from batches.models import SyncState

    call_command("migrate", verbosity=0)
    ids = _fill(args.rows, args.seed)
    # A fresh mirror: no view starts a background refresh while its queries are counted.
    now = timezone.now()
    SyncState.objects.update_or_create(
        account="default",
        defaults={"last_attempt_at": now, "last_success_at": now, "import_complete": True},
    )
    viewer = User.objects.create_user("viewer", "viewer@bench.invalid", "unused-password-1")
    viewer.groups.add(Group.objects.get(name="Viewers"))
    operator = User.objects.create_user("operator", "operator@bench.invalid", "unused-password-1")
    operator.groups.add(Group.objects.get(name="Operators"))
    _fill_audit(args.rows, ids, operator)

    client = Client()
    client.force_login(viewer)
    batch = f"/batches/default/{ids[0]}/"
    pages = {
        "list": ("/batches/", False),
        "list (status + search)": ("/batches/?status=completed&q=owner", False),
        "detail": (batch, False),
        "live fragment": (batch + "live/", True),
        "row fragment": (batch + "row/", True),
        "audit": ("/audit/", False),
    }
    counted = {name: _count(client, path, htmx) for name, (path, htmx) in pages.items()}
    return {"rows": args.rows, "pages": counted}


# --- profiles -------------------------------------------------------------------------------------


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username=args.user))
    headers = {"HX-Request": "true"} if args.htmx else {}
    for _ in range(3):
        first = client.get(args.path, headers=headers)
    if args.poll:  # the version the fragment carries: an unchanged batch then answers 204
        found = POLL_VERSION.search(first.content.decode())
        if found:
            args.path += ("&" if "?" in args.path else "?") + f"v={found.group(1)}"
    # Timed without the profiler first: cProfile itself roughly doubles the time of Python code.
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        client.get(args.path, headers=headers)
        times.append(time.perf_counter() - started)
    profiler = cProfile.Profile()
    for _ in range(args.repeat):
        profiler.enable()
        client.get(args.path, headers=headers)
        profiler.disable()
    captured: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        response = client.get(args.path, headers=headers)
    return {
        "path": args.path,
        "status": response.status_code,
        "repeat": args.repeat,
        "median_seconds": statistics.median(times),
        "queries": [_time_query(connection, sql, params) for sql, params in captured],
        **_profile_summary(pstats.Stats(profiler), args.repeat, args.top),
    }


def cmd_sync_profile(args: argparse.Namespace) -> dict[str, Any]:
    """One refresh cycle (what a stale page view starts in the background), under cProfile."""
    from batches.accounts import get_accounts
    from batches.models import TERMINAL_STATUSES, Batch
    from batches.sync import sync_account

    account = get_accounts()["default"]
    active = Batch.objects.exclude(status__in=TERMINAL_STATUSES).count()
    profiler = cProfile.Profile()
    deadline = time.monotonic() + 60
    while True:
        started = time.perf_counter()
        profiler.enable()
        result = sync_account(account)  # takes the lease, as a page view's refresh does
        profiler.disable()
        seconds = time.perf_counter() - started
        if result is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # a web worker's refresh holds the lease: wait for it to end
    stats = pstats.Stats(profiler)
    return {
        "seconds": seconds,
        "requests": result.requests if result else None,
        "list_pages": result.list_pages if result else None,
        "retrieved": result.retrieved if result else None,
        "active_mirrored": active,
        "store_seconds": _cumulative(stats, "batches/sync.py", "store_batches"),
        "app_cumulative": _profile_summary(stats, 1, args.top)["app_cumulative"],
    }


def _time_query(connection: Any, sql: str, params: Any, runs: int = 5) -> dict[str, Any]:
    """The query again, rows fetched included: SQLite does most of its work while rows are fetched,
    which a timer around execute() alone would not see. The best of a few runs."""
    best = float("inf")
    with connection.cursor() as cursor:
        for _ in range(runs):
            started = time.perf_counter()
            cursor.execute(sql, params)
            cursor.fetchall()
            best = min(best, time.perf_counter() - started)
    return {"seconds": best, "sql": sql}


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    entries = stats.stats  # type: ignore[attr-defined]
    return max(
        (ct for (f, _, n), (_, _, _, ct, _) in entries.items() if f.endswith(suffix) and n == name),
        default=0.0,
    )


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{short}:{line}({name})"


def _profile_summary(stats: pstats.Stats, repeat: int, top: int) -> dict[str, Any]:
    """Per view: the total, the template rendering's share, the busiest functions, the app's own."""
    entries = stats.stats  # type: ignore[attr-defined]
    app = str(Path(__file__).resolve().parent.parent / "batches")
    rows = [
        (
            func[0],
            {"function": _label(func), "calls": nc / repeat, "self": tt / repeat, "cumulative": ct / repeat},
        )
        for func, (_, nc, tt, ct, _) in entries.items()
    ]
    own = sorted((r for r in rows if r[0].startswith(app)), key=lambda r: -r[1]["cumulative"])
    return {
        "per_view_seconds": _cumulative(stats, "django/test/client.py", "get") / repeat,
        "render_seconds": _cumulative(stats, "django/template/loader.py", "render_to_string") / repeat,
        "by_self": [row for _, row in sorted(rows, key=lambda r: -r[1]["self"])[:top]],
        "app_cumulative": [row for _, row in own[:top]],
    }


# --- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("--out", type=Path, required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    users = commands.add_parser("users")
    users.add_argument("--viewer", required=True, help="NAME:PASSWORD")
    users.add_argument("--operator", required=True, help="NAME:PASSWORD")
    commands.add_parser("state")
    queries = commands.add_parser("queries")
    queries.add_argument("--rows", type=int, required=True)
    queries.add_argument("--seed", type=int, default=1)
    profile = commands.add_parser("profile")
    profile.add_argument("--path", required=True)
    profile.add_argument("--user", required=True)
    profile.add_argument("--htmx", action="store_true", help="send HX-Request: true")
    profile.add_argument("--poll", action="store_true", help="send the version shown, as htmx does")
    profile.add_argument("--repeat", type=int, default=30)
    profile.add_argument("--top", type=int, default=12)
    sync_profile = commands.add_parser("sync-profile")
    sync_profile.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)

    django.setup()
    handler = {
        "users": cmd_users,
        "state": cmd_state,
        "queries": cmd_queries,
        "profile": cmd_profile,
        "sync-profile": cmd_sync_profile,
    }
    result = handler[args.command](args)
    args.out.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
