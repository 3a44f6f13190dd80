"""The two roles: Viewers read everything; Operators may also cancel batches.

A signed-in user in neither group sees nothing but a 403."""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.db import migrations


def create_roles(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are normally created after all migrations; the role needs it now.
    app_config = apps.get_app_config("batches")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = {
        p.codename: p
        for p in Permission.objects.filter(
            content_type__app_label="batches", codename__in=["view_batch", "view_auditentry", "cancel_batch"]
        )
    }
    viewers, _ = Group.objects.get_or_create(name="Viewers")
    viewers.permissions.add(perms["view_batch"], perms["view_auditentry"])
    operators, _ = Group.objects.get_or_create(name="Operators")
    operators.permissions.add(perms["view_batch"], perms["view_auditentry"], perms["cancel_batch"])


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
