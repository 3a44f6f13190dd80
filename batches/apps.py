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

        from batches import webhooks
        from batches.cancel import cancel_requested

        # Webhooks only queue deliveries here; a delivery loop sends them (batches/webhooks.py).
        batch_status_changed.connect(
            webhooks.on_batch_status_changed, dispatch_uid="batches.webhooks.status_changed"
        )
        cancel_requested.connect(
            webhooks.on_cancel_requested, dispatch_uid="batches.webhooks.cancel_requested"
        )
