"""The app's URLs, plus `/bench/ping`: the cheapest response the same stack can give, and
`/bench/ping-signed-in`: the same behind the check every page of the dashboard makes first."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from batches.views.common import viewer_required


def ping(request: HttpRequest) -> HttpResponse:
    # Passes through every middleware like a page does, but renders nothing and reads no table.
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bench/ping", ping, name="bench_ping"),
    # Signed in and a viewer, else a redirect or 403: the session, the user and the permissions.
    path("bench/ping-signed-in", viewer_required(ping), name="bench_ping_signed_in"),
    path("", include("dashboard.urls")),
]
