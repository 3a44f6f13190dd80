from __future__ import annotations

from django.apps import AppConfig


class BatchesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "batches"
    verbose_name = "Batches"

    def ready(self) -> None:
        # Imported here: both modules import models, which are not ready at import time.
        from batches.signals import on_batch_status_changed
        from batches.sync import batch_status_changed

        batch_status_changed.connect(on_batch_status_changed, dispatch_uid="batches.audit.status_changed")
