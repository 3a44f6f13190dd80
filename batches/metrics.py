"""`/metrics`: the mirror and the sync in Prometheus' text exposition format (version 0.0.4).

Hand-written, no client library: three aggregate queries per scrape (batches by account and status
with their sums, the sync states, cancels by outcome). Every known account, status and error kind
is always exported, with 0 where there is nothing, so that series do not come and go.

Access: `Authorization: Bearer <METRICS_TOKEN>` (when the setting is not empty), or a client address
in METRICS_ALLOWED_IPS (addresses or networks). The address is batches.auth.client_ip's: behind a
proxy, set CLIENT_IP_HEADER, or every request arrives from the proxy's address.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast, get_args

from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from batches.accounts import get_accounts
from batches.auth import client_ip
from batches.client import ErrorKind
from batches.models import ALL_STATUSES, AuditEntry, Batch, SyncState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "batch_dashboard_"
TOKEN_KINDS = {
    "input": "input_tokens",
    "cached": "cached_tokens",
    "output": "output_tokens",
    "reasoning": "reasoning_tokens",
    "total": "total_tokens",
}
REQUEST_KINDS = {"completed": "request_completed", "failed": "request_failed"}
CANCEL_OUTCOMES = (
    AuditEntry.Outcome.ACCEPTED,
    AuditEntry.Outcome.REFUSED,
    AuditEntry.Outcome.IN_FLIGHT,
    AuditEntry.Outcome.ERROR,
)

Labels = tuple[tuple[str, str], ...]


# --- the format -------------------------------------------------------------------------------


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


class Exposition:
    """Metric families in the order added, each with its HELP, TYPE and samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: Iterable[tuple[Labels, float | int]]) -> None:
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {escape_help(help)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{escape_label(str(val))}"' for key, val in labels)
            sample = f"{full}{{{rendered}}}" if labels else full
            self.lines.append(f"{sample} {format_value(value)}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


# --- the numbers ------------------------------------------------------------------------------


def collect() -> str:
    now = timezone.now()
    sums = {f"r_{kind}": Sum(field) for kind, field in REQUEST_KINDS.items()}
    sums.update({f"t_{kind}": Sum(field) for kind, field in TOKEN_KINDS.items()})
    grouped = Batch.objects.order_by().values("account", "status").annotate(n=Count("id"), **sums)
    rows = cast("list[dict[str, Any]]", list(grouped))
    states = {state.account: state for state in SyncState.objects.all()}
    cancels = dict(
        AuditEntry.objects.filter(event=AuditEntry.Event.CANCEL)
        .order_by()
        .values("outcome")
        .annotate(n=Count("seq"))
        .values_list("outcome", "n")
    )

    configured = set(get_accounts())
    accounts = sorted(configured | {row["account"] for row in rows})
    statuses = list(ALL_STATUSES) + sorted({row["status"] for row in rows} - set(ALL_STATUSES))
    batches: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        batches[row["account"], row["status"]] += row["n"]
        for key in sums:
            totals[row["account"], key] += row[key] or 0

    out = Exposition()
    out.family(
        "batches",
        "gauge",
        "Batches in the mirror, by account and upstream status.",
        [((("account", a), ("status", s)), batches[a, s]) for a in accounts for s in statuses],
    )
    out.family(
        "requests",
        "gauge",
        "Sum of request_counts over the mirrored batches, by account and kind.",
        [((("account", a), ("kind", k)), totals[a, f"r_{k}"]) for a in accounts for k in REQUEST_KINDS],
    )
    out.family(
        "tokens",
        "gauge",
        "Sum of the reported usage over the mirrored batches, by account and kind.",
        [((("account", a), ("kind", k)), totals[a, f"t_{k}"]) for a in accounts for k in TOKEN_KINDS],
    )

    ages: list[tuple[Labels, float | int]] = []
    failures: list[tuple[Labels, float | int]] = []
    failing: list[tuple[Labels, float | int]] = []
    known_kinds = list(get_args(ErrorKind))
    for name in sorted(configured | set(states)):
        state = states.get(name)
        age = state.age(now) if state else None
        # Never synced: infinitely old, so that an alert on the age fires.
        ages.append(((("account", name),), age.total_seconds() if age is not None else math.inf))
        failures.append(((("account", name),), state.consecutive_failures if state else 0))
        current = ""
        if state is not None and state.is_failing:
            error = state.last_error if isinstance(state.last_error, dict) else {}
            current = str(error.get("kind") or "unknown")
        kinds = known_kinds if current in ("", *known_kinds) else [*known_kinds, current]
        failing += [((("account", name), ("kind", kind)), int(kind == current)) for kind in kinds]
    out.family("sync_age_seconds", "gauge", "Seconds since the account's last successful sync.", ages)
    out.family(
        "sync_consecutive_failures",
        "gauge",
        "Sync cycles failed in a row (0 when the last one worked).",
        failures,
    )
    out.family(
        "sync_failing",
        "gauge",
        "1 for the kind of upstream error the account's sync is failing with, else 0.",
        failing,
    )
    outcomes = [str(o) for o in CANCEL_OUTCOMES] + sorted(set(cancels) - set(CANCEL_OUTCOMES))
    out.family(
        "cancels_total",
        "counter",
        "Cancels requested from the dashboard, by outcome (from the audit trail).",
        [((("outcome", o),), cancels.get(o, 0)) for o in outcomes],
    )
    return out.render()


# --- access -----------------------------------------------------------------------------------


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    # Every entry was checked at start-up (settings.py refuses to start with a bad one).
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in settings.METRICS_ALLOWED_IPS]


def address_allowed(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    networks = _networks()
    return any(candidate in network for candidate in candidates for network in networks)


def token_allowed(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


@require_safe
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not (token_allowed(request) or address_allowed(client_ip(request))):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain; charset=utf-8")
    return HttpResponse(collect(), content_type=CONTENT_TYPE)
