"""Fewer, smaller indexes on devices_device (every device write pays for each one).

Every write of a device row changes an indexed column (last_seen_at, overall_status, the heartbeat
state or deadline), so none is a HOT update: each inserts a new entry into EVERY index of the
table, and after each checkpoint the first touch of an index page writes the whole page to the WAL.
Measured on the 1 M-device bench data, one UPDATE of 1,000 random devices wrote ~11,000 full-page
images (74 MB of WAL) with 20 indexes. So:

- the single-column indexes Django makes for the two foreign keys go: every lookup by organization
  or fleet is served by an (organization, ...) or (fleet, ...) index;
- dev_org_activation goes: its only reader, reconcile_frozen, reads every active device of the
  organization anyway (the plan on 100,000 devices was the same bitmap scan + sort without it);
- dev_org_vpn goes: for the Devices page's "sort by cloudlink" (two values, then the name) the
  planner scanned the organization's rows rather than use it (about 1 s on 100,000 devices with or
  without it; an (organization, is_connected_to_vpn, name) index would be what serves that sort),
  and nothing else needs it;
- dev_api_key_hash becomes a hash index on PostgreSQL (equality is its only lookup; a SHA-256 hex
  digest makes a 126 MB btree, the hash index is a fraction of it), under the same name, so the
  model state (a plain Index, which SQLite keeps) is unchanged;
- uuid gets collation "C" on PostgreSQL and loses Django's second, varchar_pattern_ops index
  (devices_device_uuid_<hash>_like): under "C" the unique index serves LIKE 'prefix%' as well as
  equality and ORDER BY uuid (a lowercase hex string sorts the same in every collation). Done
  outside the model state because SQLite has no "C" collation; a later AlterField of uuid would
  give the column back its default collation and Django its _like index, which is correct, only
  bigger.
"""

from django.db import migrations, models


def _like_index(schema_editor) -> str:
    return schema_editor._create_index_name("devices_device", ["uuid"], suffix="_like")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP INDEX IF EXISTS dev_api_key_hash")
    schema_editor.execute("CREATE INDEX dev_api_key_hash ON devices_device USING hash (api_key_hash)")
    schema_editor.execute('ALTER TABLE devices_device ALTER COLUMN uuid TYPE varchar(62) COLLATE "C"')
    schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(_like_index(schema_editor))}")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute('ALTER TABLE devices_device ALTER COLUMN uuid TYPE varchar(62) COLLATE "default"')
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(_like_index(schema_editor))} "
        "ON devices_device (uuid varchar_pattern_ops)"
    )
    schema_editor.execute("DROP INDEX IF EXISTS dev_api_key_hash")
    schema_editor.execute("CREATE INDEX dev_api_key_hash ON devices_device (api_key_hash)")


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0003_device_api_key_hash_index"),
        ("fleets", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="device",
            name="organization",
            field=models.ForeignKey(
                db_index=False, on_delete=models.deletion.PROTECT, related_name="devices", to="fleets.organization"
            ),
        ),
        migrations.AlterField(
            model_name="device",
            name="fleet",
            field=models.ForeignKey(
                db_index=False, on_delete=models.deletion.PROTECT, related_name="devices", to="fleets.fleet"
            ),
        ),
        migrations.RemoveIndex(model_name="device", name="dev_org_activation"),
        migrations.RemoveIndex(model_name="device", name="dev_org_vpn"),
        migrations.RunPython(forwards, backwards),
    ]
