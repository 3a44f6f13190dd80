"""The sync worker: `manage.py sync_batches` keeps the mirror in step with every account.

A loop in the style of healthchecks' `sendalerts`: each round runs one cycle per account that is
due (not backing off, not being refreshed by another process right now), then sleeps. SIGTERM or
SIGINT stops it between two upstream requests; what was stored stays, and a first import that
was cut short resumes from its saved cursor on the next run. Once an hour it also deletes expired
sessions (what `manage.py clearsessions` does), so that table does not grow without end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from batches.accounts import get_accounts
from batches.management.loop import LoopCommand
from batches.sessions import SessionStore
from batches.sync import sync_account
from batches.webhooks import deliver_due_safely

# After each round, due webhook deliveries are sent for at most this long (plus one send's timeouts).
WEBHOOK_SECONDS_PER_ROUND = 10.0
SESSION_CLEANUP_SECONDS = 3600

log = logging.getLogger("batches.sync")


class Command(LoopCommand):
    help = "Sync the batches of every upstream account into the local mirror, in a loop."
    stops_after = "the current request"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval", type=float, default=None, help="seconds between rounds (SYNC_INTERVAL)"
        )
        parser.add_argument("--once", action="store_true", help="run one round and exit")
        parser.add_argument("--account", action="append", default=[], help="only these accounts (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        accounts = get_accounts()
        if options["account"]:
            unknown = set(options["account"]) - set(accounts)
            if unknown:
                raise CommandError(f"unknown account(s): {', '.join(sorted(unknown))}")
            accounts = {name: accounts[name] for name in options["account"]}
        if not accounts:
            raise CommandError("no upstream account is configured: set OPENAI_API_KEY or UPSTREAM_ACCOUNTS.")
        interval = options["interval"] if options["interval"] is not None else settings.SYNC_INTERVAL
        self.stop_on_signals()

        self.stdout.write(f"sync_batches: {len(accounts)} account(s), every {interval:g} s")
        next_cleanup = 0.0
        while not self.stop_requested:
            if time.monotonic() >= next_cleanup:
                clear_expired_sessions()
                next_cleanup = time.monotonic() + SESSION_CLEANUP_SECONDS
            for account in accounts.values():
                if self.stop_requested:
                    break
                result = sync_account(account, should_stop=lambda: self.stop_requested)
                if result is None:
                    self.stdout.write(f"{account.name}: skipped (backing off, or another process syncs it)")
                    continue
                status = "ok" if result.ok else (f"error: {result.error}" if result.error else "interrupted")
                self.stdout.write(f"{account.name}: {result.requests} requests, {result.new} new, {status}")
            # Webhooks the round queued (and any others due), for a bounded time: the sync comes first.
            deliver_due_safely(max_seconds=WEBHOOK_SECONDS_PER_ROUND, should_stop=lambda: self.stop_requested)
            if options["once"]:
                break
            self.sleep(interval)
        self.stdout.write("sync_batches: stopped")


def clear_expired_sessions() -> None:
    """One DELETE on the expiry index; any number of workers may run it."""
    try:
        SessionStore.clear_expired()
    except DatabaseError:  # the next round's sync reports an unreachable database; try in an hour
        log.exception("could not delete expired sessions")
