"""Check the audit trail's hash chain: exit 0 when intact, 1 naming the first broken entry."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from batches.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain and print the head hash (keep it elsewhere to compare later)."

    def handle(self, *args: Any, **options: Any) -> None:
        result = verify_chain()
        if not result.ok:
            # CommandError: the message on stderr and exit status 1, which is what cron and CI check.
            raise CommandError(str(result))
        self.stdout.write(self.style.SUCCESS(str(result)))
        self.stdout.write(f"head hash: {result.head_hash}")
