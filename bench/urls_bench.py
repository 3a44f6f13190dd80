"""The app's URLs, plus `/bench/ping`: the cheapest response the same stack can give."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def ping(request: HttpRequest) -> HttpResponse:
    # Passes through every middleware like a page does, but renders nothing and reads no table.
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bench/ping", ping, name="bench_ping"),
    path("", include("dashboard.urls")),
]
