"""Formatting for the monitoring pages: durations, relative times, token counts, the progress chart.

Everything here goes through format_html or returns plain text for autoescaping: the values may
come from the upstream, which is untrusted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from batches import progress
from batches.models import Batch

register = template.Library()

DASH = "—"


@register.filter
def duration(value: dt.timedelta | None) -> str:
    """A compact, human duration: "45 s", "12 min", "3 h 05 min", "2 d 4 h"."""
    if value is None:
        return DASH
    seconds = max(int(value.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@register.filter
def ago(value: dt.datetime | None) -> str:
    """Relative to now: "12 s ago", "in 3 h"."""
    if value is None:
        return DASH
    delta = timezone.now() - value
    if abs(delta) < dt.timedelta(seconds=1):
        return "just now"
    if delta < dt.timedelta(0):
        return f"in {duration(-delta)}"
    return f"{_coarse(delta)} ago"


def _coarse(delta: dt.timedelta) -> str:
    # One unit is enough for "how long ago"; the exact time is in the title.
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "d" else 1):
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@register.filter
def utc(value: dt.datetime | None) -> str:
    if value is None:
        return DASH
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@register.simple_tag
def timeago(value: dt.datetime | None) -> SafeString | str:
    """`<time>` with the machine-readable time, the exact UTC time as a tooltip, and "3 h ago"."""
    if value is None:
        return DASH
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(), utc(value), ago(value))


@register.filter
def tokens(value: int | None) -> str:
    """Short token counts: 812, 45.3k, 1.27M, 3.4B; "—" when not reported."""
    if value is None:
        return DASH
    for suffix, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.3g}{suffix}" if scaled < 1000 else f"{scaled:.0f}{suffix}"
    return str(value)


@register.filter
def grouped(value: int | None) -> str:
    """12,345,678 (no locale: the page is English)."""
    return DASH if value is None else f"{value:,}"


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}%"


@register.filter
def svgnum(value: float | None) -> str:
    """A number for an SVG attribute: always a dot decimal, whatever the locale."""
    return f"{value or 0:.2f}"


@register.inclusion_tag("batches/_chart.html")
def progress_chart(batch: Batch, points: list[progress.Point]) -> dict[str, Any]:
    return {"chart": progress.chart(batch, points), "batch": batch}
