from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path
from django.views.generic import RedirectView

from batches import api, metrics
from batches.bulk import JOB_ID_RE
from batches.views import audit, bulk, cancel, health, monitor
from batches.views import tokens as token_views

batch = "batches/<str:account>/<str:batch_id>/"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="batch_list", permanent=False)),
    path("batches/", monitor.batch_list, name="batch_list"),
    # Before the batch routes: "cancel" would otherwise be taken for an account name.
    path("batches/cancel/", bulk.bulk_cancel, name="bulk_cancel"),
    re_path(rf"^batches/cancel/(?P<job_id>{JOB_ID_RE})/$", bulk.bulk_progress, name="bulk_cancel_progress"),
    path(batch, monitor.batch_detail, name="batch_detail"),
    path(batch + "row/", monitor.batch_row, name="batch_row"),
    path(batch + "live/", monitor.batch_live, name="batch_live"),
    path(batch + "files/<str:file_id>/", monitor.file_download, name="file_download"),
    path(batch + "cancel/", cancel.cancel_batch, name="batch_cancel"),
    path("audit/", audit.audit_list, name="audit_list"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit_export"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("account/tokens/", token_views.token_list, name="api_tokens"),
    path("account/tokens/<int:pk>/revoke/", token_views.token_revoke, name="api_token_revoke"),
    path("api/v1/batches", api.batch_list, name="api_batch_list"),
    # <path:…>: a malformed id with a slash still gets the API's JSON 404.
    path("api/v1/batches/<str:account>/<path:batch_id>", api.batch_detail, name="api_batch_detail"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
