"""Money, for the cost estimates."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template

register = template.Library()

CENT = Decimal("0.01")


@register.filter
def usd(value: Decimal | None) -> str:
    """ "$1,234.56"; "< $0.01" for a positive amount that rounds to nothing; "—" for none."""
    if value is None:
        return "—"
    if Decimal(0) < value < CENT / 2:
        return "< $0.01"
    return f"${value.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"
