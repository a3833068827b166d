"""Indexes that give every Devices page sort and the search their rows without a scan of the
organization (pages stay fast at 100,000 devices of one organization).

- The sorts with a second key (device type, OS, release, IP address, heartbeat, cloudlink) order by
  (x, name, id): (organization, x, name) replaces (organization, x), so an index scan yields the
  page in order and only equal names are sorted by id (an incremental sort of a few rows). The
  cloudlink sort gets (organization, is_connected_to_vpn, name) back (0004 dropped the two-column
  one, which no plan used; with the name in it the plan reads 51 rows). Same index count for the
  five replaced, one more for cloudlink.
  What writes pay: with the name every entry is distinct, so B-tree deduplication no longer folds
  the few values of (organization, x): on the 1 M-device bench data each of these is 47-63 MB
  instead of 7-11 MB, and a 1,000-row UPDATE after a checkpoint writes ~600 full-page images per
  index instead of ~150 (all 19 indexes: ~60 MB of WAL for a 1,000-row write-back, ~22 MB with
  the 15 of 0004).
- PostgreSQL only, outside the model state (SQLite has no GIN; an index in Device.Meta would break
  every later SQLite table rebuild):
  * dev_name_trgm, GIN (upper(name) gin_trgm_ops): the search's name contains is
    `UPPER(name::text) LIKE UPPER('%q%')` (Django's icontains); a B-tree cannot serve it, so it read
    every device of the organization. pg_trgm needs at least one three-character trigram in q;
    a search of one or two characters still reads the organization's rows.
  * dev_ip_trgm, GIN (ip_address gin_trgm_ops): the search's IP contains (`ip_address LIKE '%q%'`).
  No index for "a status, sorted by last seen" (e.g. offline, newest first): the status rule makes
  offline devices the least recently seen, so that page walks (organization, last_seen_at DESC
  NULLS LAST) past the organization's other devices (~200-500 ms at 100,000 devices on a loaded
  machine). (organization, overall_status, last_seen_at DESC NULLS LAST) made it 2 ms but added
  ~560 full-page images (~4 MB of WAL) to every 1,000-row device UPDATE after a checkpoint.
  Both GIN indexes keep the default fastupdate: a device write (none changes the name or the IP,
  but none is a HOT update either, so each adds its trigrams again) appends one entry to the
  pending list (no full-page images measured), which autovacuum, or the write that finds the list
  past gin_pending_list_limit (4 MB), merges: ~0.3-0.4 s for 4,000 pending rows per index. With
  fastupdate off a 1,000-row UPDATE wrote ~29,000 GIN records and ~48 MB of full-page images and
  took 1.2-1.9 s instead of 0.7 s.
"""

from django.db import migrations, models

# {ops}: gin_trgm_ops qualified with the schema pg_trgm lives in, which need not be on the search
# path (the bench's second installation lives in a schema of its own, the extension in public).
PG_INDEXES = {
    "dev_name_trgm": "ON devices_device USING gin ((upper(name::text)) {ops})",
    "dev_ip_trgm": "ON devices_device USING gin (ip_address {ops})",
}


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        )
        (schema,) = cursor.fetchone()
    ops = f"{schema_editor.quote_name(schema)}.gin_trgm_ops"
    for name, definition in PG_INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition.format(ops=ops)}")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The extension stays: other objects may use it, and it costs nothing unused.
    for name in PG_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def _replace(column: str, old: str, new: str) -> list:
    return [
        migrations.RemoveIndex(model_name="device", name=old),
        migrations.AddIndex(model_name="device", index=models.Index(fields=["organization", column, "name"], name=new)),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0004_device_index_diet"),
    ]

    operations = [
        *_replace("device_type", "dev_org_device_type", "dev_org_device_type_name"),
        *_replace("os_version", "dev_org_os", "dev_org_os_name"),
        *_replace("release", "dev_org_release", "dev_org_release_name"),
        *_replace("ip_address", "dev_org_ip", "dev_org_ip_name"),
        *_replace("api_heartbeat_state", "dev_org_heartbeat", "dev_org_heartbeat_name"),
        migrations.AddIndex(
            model_name="device",
            index=models.Index(fields=["organization", "is_connected_to_vpn", "name"], name="dev_org_vpn_name"),
        ),
        migrations.RunPython(forwards, backwards),
    ]
