"""Bulk cancel from the list: selected rows, or every cancellable batch matching the list's filters.

POST /batches/cancel/ starts a job (batches/bulk.py) and answers with its progress panel, which
polls GET /batches/cancel/<job id>/ every second until the job is done (then 286).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from batches import audit, bulk
from batches.auth import client_ip
from batches.filters import BatchFilters
from batches.views.common import HtmxHttpRequest, cancel_reason, operator_required

PANEL = "batches/_bulk_progress.html"


def _problem(request: HtmxHttpRequest, message: str, status: int, **extra: Any) -> HttpResponse:
    context = {"message": message, **extra}
    template = "batches/_bulk_problem.html" if request.htmx else "batches/bulk_cancel.html"
    return render(request, template, context, status=status)


@require_POST
@operator_required
def bulk_cancel(request: HtmxHttpRequest) -> HttpResponse:
    reason, message = cancel_reason(request)
    if message:
        return _problem(request, message, 400)
    ids = request.POST.getlist("ids")
    by_filter = "filter" in request.POST
    if ids and by_filter:
        return _problem(request, "Send either selected batches or a filter, not both. Nothing was sent.", 400)
    if by_filter:
        filters = bulk.filters_from_querystring(request.POST["filter"])
        try:
            expected = int(request.POST.get("expected", ""))
        except ValueError:
            return _problem(request, "The confirmed count is missing. Nothing was sent.", 400)
        # The very rows that will be sent are the ones counted (one more than the cap tells "too many").
        targets = list(bulk.filter_targets(filters).values_list("account", "batch_id")[: bulk.MAX_IDS + 1])
        count = len(targets) if len(targets) <= bulk.MAX_IDS else bulk.count_for(filters)
        if count != expected:
            # The set changed since the user confirmed: say so, send nothing, let them confirm again.
            message = (
                "The batches matching this filter changed since you confirmed: "
                f"{count} can be cancelled now, not {expected}. Nothing was sent."
            )
            response = _problem(request, message, 409, count=count)
            response["X-Bulk-Count"] = str(count)
            return response
        if count > bulk.MAX_IDS:
            return _problem(
                request,
                f"{count} batches match; at most {bulk.MAX_IDS} can be cancelled at once. "
                "Narrow the filter. Nothing was sent.",
                400,
            )
    else:
        try:
            targets = bulk.parse_ids(ids)
        except bulk.InvalidSelection as exc:
            return _problem(request, str(exc), 400)
    who = bulk.Who(
        user=request.user, reason=reason, client_ip=client_ip(request), user_agent=audit.user_agent(request)
    )
    job = bulk.create_job(targets, who)
    bulk.start(job, targets, who)
    job = bulk.get_job(job["id"]) or job
    template = PANEL if request.htmx else "batches/bulk_cancel.html"
    return render(request, template, _panel_context(job))


@require_GET
@operator_required
def bulk_progress(request: HtmxHttpRequest, job_id: str) -> HttpResponse:
    job = bulk.get_job(job_id)
    if job is None:
        # Expired from the cache (or started on an instance with its own locmem cache): stop polling.
        return HttpResponseStopPolling(render_to_string(PANEL, {"job": None, "job_id": job_id}, request))
    if job.get("user_id") != request.user.pk:
        raise Http404("No such bulk cancel.")
    context = _panel_context(job)
    if job["finished"]:
        return HttpResponseStopPolling(render_to_string(PANEL, context, request))
    return render(request, PANEL, context)


def _panel_context(job: dict[str, Any]) -> dict[str, Any]:
    counts = {key: 0 for key in bulk.LABELS}
    for item in job["items"]:
        counts[item["outcome"]] = counts.get(item["outcome"], 0) + 1
    summary = [(bulk.LABELS[key], key, n) for key, n in counts.items() if n]
    items = [{**item, "label": bulk.LABELS.get(item["outcome"], item["outcome"])} for item in job["items"]]
    return {"job": job, "job_id": job["id"], "summary": summary, "items": items}


def list_context(filters: BatchFilters, *, operator: bool, count: int) -> dict[str, Any]:
    """For the list's "Cancel all N" button: operators only. `count`: the cancellable batches
    matching the filters (the list derives it from its aggregate)."""
    if not operator:
        return {"bulk_count": 0, "bulk_filter": ""}
    return {"bulk_count": count, "bulk_filter": bulk.filter_querystring(filters)}
