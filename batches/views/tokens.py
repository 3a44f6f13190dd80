"""`/account/tokens/`: each user's own API tokens: create (shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from batches import tokens
from batches.models import ApiToken
from batches.views.common import HtmxHttpRequest, viewer_required

# More than anyone needs; a bound on what one account can pile up.
MAX_ACTIVE_TOKENS = 20


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True, help_text="What it is for, e.g. the script's name.")


@require_http_methods(["GET", "HEAD", "POST"])
@viewer_required
def token_list(request: HtmxHttpRequest) -> HttpResponse:
    user: Any = request.user  # signed in: viewer_required
    mine = ApiToken.objects.filter(user=user)
    form = TokenForm(request.POST if request.method == "POST" else None)
    new_token = ""
    status = 200
    if request.method == "POST":
        if mine.filter(revoked_at__isnull=True).count() >= MAX_ACTIVE_TOKENS:
            form.add_error(None, f"You have {MAX_ACTIVE_TOKENS} active tokens: revoke one first.")
        if form.is_valid():
            # Rendered straight away, never stored: a redirect would have to keep the plaintext
            # somewhere (the session) to show it on the next page.
            _, new_token = tokens.issue(user, form.cleaned_data["name"])
            form = TokenForm()
            status = 200
        else:
            status = 400
    context = {"form": form, "tokens": list(mine), "new_token": new_token}
    response = render(request, "account/tokens.html", context, status=status)
    # The one page that ever shows a token: no cache may keep it.
    add_never_cache_headers(response)
    return response


@require_POST
@viewer_required
def token_revoke(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    # Only one's own: someone else's token is a 404, as if it did not exist.
    user: Any = request.user
    token = ApiToken.objects.filter(user=user, pk=pk)
    if not token.exists():
        raise Http404("No such token.")
    if tokens.revoke(token):
        messages.success(request, "The token was revoked: it no longer works.")
    return redirect("api_tokens")
