"""`manage.py load_prices`: seed the model price table for the cost estimates. Safe to run again."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from batches.costs import DEFAULT_PRICES, PRICES_EFFECTIVE_DATE, load_default_prices


class Command(BaseCommand):
    help = (
        "Add the built-in list prices for the models the price table lacks "
        "(prices edited in the admin stay, unless --update)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--update", action="store_true", help="also reset the listed models to the built-in prices"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        created, updated = load_default_prices(update=options["update"])
        kept = len(DEFAULT_PRICES) - created - updated
        self.stdout.write(
            f"Prices of {PRICES_EFFECTIVE_DATE.isoformat()}: {created} added, {updated} updated, "
            f"{kept} left as they were."
        )
