from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from batches.views import audit, cancel, health, monitor

batch = "batches/<str:account>/<str:batch_id>/"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="batch_list", permanent=False)),
    path("batches/", monitor.batch_list, name="batch_list"),
    path(batch, monitor.batch_detail, name="batch_detail"),
    path(batch + "row/", monitor.batch_row, name="batch_row"),
    path(batch + "live/", monitor.batch_live, name="batch_live"),
    path(batch + "files/<str:file_id>/", monitor.file_download, name="file_download"),
    path(batch + "cancel/", cancel.cancel_batch, name="batch_cancel"),
    path("audit/", audit.audit_list, name="audit_list"),
    path("audit/export.<str:fmt>", audit.audit_export, name="audit_export"),
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
