from django.db import migrations

# "Last seen, newest first" sorts DESC NULLS LAST (never-seen devices at the end); a backward scan
# of (organization, last_seen_at) would put NULLs first, so PostgreSQL gets its own index.
# It is created outside the migration state on purpose: SQLite cannot index NULLS LAST, and an
# index in Device.Meta would break every later SQLite table rebuild (AlterField, RemoveField).


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS dev_org_last_seen_desc "
            "ON devices_device (organization_id, last_seen_at DESC NULLS LAST)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS dev_org_last_seen_desc")


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0001_initial"),
        ("fleets", "0001_initial"),
    ]

    operations = [migrations.RunPython(create, drop)]
