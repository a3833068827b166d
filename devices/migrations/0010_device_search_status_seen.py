"""The search moves to a side table kept by triggers (DeviceSearch, devices/search.py), and a
status filter sorted by last seen gets its indexes.

- The two trigram GIN indexes of migration 0005 leave devices_device: every device write (none is
  a HOT update) added its trigrams to them again. They are made on devices_devicesearch instead,
  whose rows change only with a searched column or the status, the status as a HOT update
  (fillfactor 80 leaves the room). PostgreSQL only, outside the model state (SQLite has no GIN):
  * devsearch_name_trgm, GIN (name gin_trgm_ops) (name holds UPPER(name)): name contains,
  * devsearch_ip_trgm, GIN (ip_address gin_trgm_ops): IP contains,
  * devsearch_org_uuid, (organization_id, uuid text_pattern_ops): the UUID prefix beside them.
  A search of one or two characters has no trigram and reads the organization's rows of this
  narrow table (devsearch_org_device: in the order rebuild() writes the rows, so that scan reads
  the table's pages in order), which is also where its counts per status come from.
- (organization, overall_status, last_seen_at) serves a status sorted by last seen, oldest first;
  newest first sorts DESC NULLS LAST, which no backward scan of it gives, so PostgreSQL gets
  (organization_id, overall_status, last_seen_at DESC NULLS LAST) outside the model state (as
  migration 0002 did for last seen alone).
"""

from django.db import migrations, models

# {ops}: gin_trgm_ops qualified with pg_trgm's schema (see migration 0005).
SEARCH_INDEXES = {
    "devsearch_name_trgm": "ON devices_devicesearch USING gin (name {ops})",
    "devsearch_ip_trgm": "ON devices_devicesearch USING gin (ip_address {ops})",
    "devsearch_org_uuid": "ON devices_devicesearch (organization_id, uuid text_pattern_ops)",
}
DEVICE_INDEXES = {
    "dev_org_status_seen_desc": "ON devices_device (organization_id, overall_status, last_seen_at DESC NULLS LAST)",
}
# What migration 0005 made, dropped here and made again when migrating back.
OLD_DEVICE_INDEXES = {
    "dev_name_trgm": "ON devices_device USING gin ((upper(name::text)) {ops})",
    "dev_ip_trgm": "ON devices_device USING gin (ip_address {ops})",
}


def _trgm_ops(schema_editor) -> str:
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        )
        (schema,) = cursor.fetchone()
    return f"{schema_editor.quote_name(schema)}.gin_trgm_ops"


def forwards(apps, schema_editor):
    connection = schema_editor.connection
    postgresql = connection.vendor == "postgresql"
    if postgresql:
        schema_editor.execute("ALTER TABLE devices_devicesearch SET (fillfactor = 80)")
        for name in OLD_DEVICE_INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        for name, definition in DEVICE_INDEXES.items():
            schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition}")
    # The triggers and the copy of the devices come with migration 0011: devices/search.py writes
    # the newest shape of the table, which has the tag lines 0011 adds.
    if postgresql:
        ops = _trgm_ops(schema_editor)
        for name, definition in SEARCH_INDEXES.items():
            schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition.format(ops=ops)}")


def backwards(apps, schema_editor):
    from devices import search

    connection = schema_editor.connection
    search.drop_triggers(connection)
    if connection.vendor == "postgresql":
        ops = _trgm_ops(schema_editor)
        for name in {**SEARCH_INDEXES, **DEVICE_INDEXES}:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        for name, definition in OLD_DEVICE_INDEXES.items():
            schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition.format(ops=ops)}")


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0009_device_columns"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeviceSearch",
            fields=[
                ("device_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("organization_id", models.BigIntegerField()),
                ("fleet_id", models.BigIntegerField()),
                ("overall_status", models.CharField(max_length=24)),
                ("name", models.CharField(max_length=100)),
                ("ip_address", models.CharField(max_length=255)),
                ("uuid", models.CharField(max_length=62)),
            ],
            options={
                "indexes": [models.Index(fields=["organization_id", "device_id"], name="devsearch_org_device")],
            },
        ),
        migrations.AddIndex(
            model_name="device",
            index=models.Index(fields=["organization", "overall_status", "last_seen_at"], name="dev_org_status_seen"),
        ),
        migrations.RunPython(forwards, backwards),
    ]
