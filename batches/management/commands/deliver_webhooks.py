"""The webhook sender: `manage.py deliver_webhooks` sends queued webhook deliveries, in a loop.

Like `sync_batches`, a loop in the style of healthchecks' `sendalerts`: each round sends every
delivery that is due (claimed one at a time, so several of these loops, and the sync worker that
also delivers after its rounds, never send one delivery twice), then sleeps. SIGTERM or SIGINT
stops it after the current send.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from batches.models import WebhookDelivery
from batches.webhooks import Attempt, deliver_due


class Command(BaseCommand):
    help = "Send queued webhook deliveries (with retries and backoff), in a loop."

    stop_requested = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (default 5)")
        parser.add_argument("--once", action="store_true", help="send what is due now and exit")

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stdout.write(f"received {signal.Signals(signum).name}, stopping after the current delivery")
        self.stop_requested = True

    def handle(self, *args: Any, **options: Any) -> None:
        interval = max(0.1, options["interval"])
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

        self.stdout.write(f"deliver_webhooks: every {interval:g} s")
        while not self.stop_requested:
            result = deliver_due(should_stop=lambda: self.stop_requested, report=self.report)
            if options["once"]:
                self.stdout.write(
                    f"{result.delivered} delivered, {result.retrying} to retry, {result.failed} failed"
                )
                break
            self.sleep(interval)
        self.stdout.write("deliver_webhooks: stopped")

    def report(self, delivery: WebhookDelivery, attempt: Attempt, status: str) -> None:
        # The webhook's id and host, never its URL: a Slack webhook's path is its credential.
        outcome = status or "claim lost"
        detail = f" ({attempt.error})" if attempt.error else ""
        self.stdout.write(
            f"delivery #{delivery.pk} {delivery.event} → webhook #{delivery.webhook_id} "
            f"({delivery.webhook.host}): {outcome}{detail}"
        )

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.5, deadline - time.monotonic()))
