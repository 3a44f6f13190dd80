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

        from django.db.models.signals import post_delete, post_save

        from batches.costs import invalidate_prices
        from batches.models import ModelPrice

        # The price table is cached (costs.cached_prices): an edit clears it.
        post_save.connect(invalidate_prices, sender=ModelPrice, dispatch_uid="batches.prices.saved")
        post_delete.connect(invalidate_prices, sender=ModelPrice, dispatch_uid="batches.prices.deleted")
