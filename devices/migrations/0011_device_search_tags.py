"""The search rows get the device's tags (one "key=value" line each), kept by triggers on the tags,
so a tag filter and the counts of its matches read the narrow search rows (devices/search.py); and
the device's name as it is, with (organization, name, device) to take a page sorted by name from
these rows when a search or tag filter narrows it.

- Every trigger of devices/search.py is installed (the device ones again, the tag ones new) and
  the devices are copied again, tags included: device writes wait for it (SHARE lock).
- PostgreSQL: devsearch_tags, GIN over the lines as an array, outside the model state: a filter
  on several tags is one index lookup that intersects their devices. Built after the copy.
"""

from django.db import migrations, models

TAGS_INDEX = "devsearch_tags"
# The expression of devices.queries.HasTags: a query uses the index only with the same one.
TAGS_INDEX_SQL = f"CREATE INDEX IF NOT EXISTS {TAGS_INDEX} ON devices_devicesearch USING gin (string_to_array(tags, chr(10)))"


def forwards(apps, schema_editor):
    from devices import search

    connection = schema_editor.connection
    # Triggers first: once they exist, the SHARE lock rebuild() takes holds off device and tag
    # writes until this transaction commits, so the copy is exact.
    search.install_triggers(connection)
    search.rebuild(connection)
    if connection.vendor == "postgresql":
        schema_editor.execute(TAGS_INDEX_SQL)


def backwards(apps, schema_editor):
    from devices import search

    connection = schema_editor.connection
    search.drop_triggers(connection, table=search.TAGS)
    if connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {TAGS_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0010_device_search_status_seen"),
    ]

    operations = [
        migrations.AddField(
            model_name="devicesearch",
            name="tags",
            field=models.TextField(db_default="", default=""),
        ),
        migrations.AddField(
            model_name="devicesearch",
            name="sort_name",
            field=models.CharField(default="", max_length=100),
            preserve_default=False,
        ),
        migrations.RunPython(forwards, backwards),
        # After the copy: built once, not row by row.
        migrations.AddIndex(
            model_name="devicesearch",
            index=models.Index(fields=["organization_id", "sort_name", "device_id"], name="devsearch_org_name"),
        ),
    ]
