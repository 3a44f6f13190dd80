"""The cancel button's endpoint: one POST, answered with the row (or live panel) it came from."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from batches import audit
from batches.auth import client_ip
from batches.cancel import request_cancel
from batches.client import UpstreamError
from batches.models import Batch
from batches.views import monitor
from batches.views.common import (
    HtmxHttpRequest,
    cancel_reason,
    get_account_or_404,
    get_batch_or_404,
    operator_required,
)

# `where` names the fragment the button sits in; the answer replaces that fragment.
FRAGMENTS = {
    "row": ("batches/list.html#row", monitor.row_context),
    "detail": ("batches/detail.html#live", monitor.live_context),
}


@require_POST
@operator_required
def cancel_batch(request: HtmxHttpRequest, account: str, batch_id: str) -> HttpResponse:
    batch = get_batch_or_404(account, batch_id)
    upstream = get_account_or_404(account)

    reason, message = cancel_reason(request)
    if message:
        if not request.htmx:
            messages.error(request, message)
            return redirect("batch_detail", account=account, batch_id=batch_id)
        return _fragment(request, batch, {"cancel_error": message}, status=400)

    outcome = request_cancel(
        user=request.user,
        account=upstream,
        batch=batch,
        reason=reason,
        client_ip=client_ip(request),
        user_agent=audit.user_agent(request),
    )
    if not request.htmx:
        # Without JavaScript: the detail page, with the outcome as a one-time message.
        if outcome.error is not None:
            messages.error(request, _error_text(outcome.error))
        elif outcome.notice:
            messages.info(request, outcome.notice)
        else:
            messages.success(request, f"Cancel accepted: {batch.batch_id} is {outcome.batch.status}.")
        return redirect("batch_detail", account=account, batch_id=batch_id)
    extra: dict[str, Any] = {"cancel_error": outcome.error, "cancel_notice": outcome.notice}
    if outcome.accepted:
        extra["cancel_notice"] = f"Cancel accepted; the batch is {outcome.batch.status}."
    return _fragment(request, outcome.batch, extra)


def _fragment(
    request: HtmxHttpRequest, batch: Batch, extra: dict[str, Any], status: int = 200
) -> HttpResponse:
    template, context_of = FRAGMENTS.get(request.POST.get("where", ""), FRAGMENTS["detail"])
    return render(request, template, {**context_of(request, batch), **extra}, status=status)


def _error_text(error: UpstreamError) -> str:
    text = error.title
    if error.status is not None:
        text += f" (HTTP {error.status})"
    text += f": {error.message}"
    if error.request_id:
        text += f" Request id: {error.request_id}."
    return text
