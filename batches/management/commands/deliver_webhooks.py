"""The webhook sender: `manage.py deliver_webhooks` sends queued webhook deliveries, in a loop.

Like `sync_batches`, a loop in the style of healthchecks' `sendalerts`: each round sends every
delivery that is due (claimed one at a time, so several of these loops, and the sync worker that
also delivers after its rounds, never send one delivery twice), then sleeps. SIGTERM or SIGINT
stops it after the current send.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from batches.management.loop import LoopCommand
from batches.webhooks import deliver_due


class Command(LoopCommand):
    help = "Send queued webhook deliveries (with retries and backoff), in a loop."
    stops_after = "the current delivery"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (default 5)")
        parser.add_argument("--once", action="store_true", help="send what is due now and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        interval = max(0.1, options["interval"])
        self.stop_on_signals()
        self.stdout.write(f"deliver_webhooks: every {interval:g} s")
        # Each delivery is logged by deliver_due (the `batches` logger): its webhook's id and host.
        while not self.stop_requested:
            result = deliver_due(should_stop=lambda: self.stop_requested)
            if options["once"]:
                self.stdout.write(
                    f"{result.delivered} delivered, {result.retrying} to retry, {result.failed} failed"
                )
                break
            self.sleep(interval)
        self.stdout.write("deliver_webhooks: stopped")
