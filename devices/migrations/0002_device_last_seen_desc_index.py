from django.db import migrations, models


class AddIndexOnPostgres(migrations.AddIndex):
    """SQLite cannot put NULLS LAST in an index; there the page sorts without it (small data)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):

    dependencies = [
        ("devices", "0001_initial"),
        ("fleets", "0001_initial"),
    ]

    operations = [
        AddIndexOnPostgres(
            model_name="device",
            index=models.Index(
                models.F("organization"),
                models.OrderBy(models.F("last_seen_at"), descending=True, nulls_last=True),
                name="dev_org_last_seen_desc",
            ),
        ),
    ]
