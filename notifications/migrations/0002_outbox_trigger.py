from django.db import migrations


def install(apps, schema_editor):
    from notifications import outbox

    outbox.install_trigger(schema_editor.connection)


def drop(apps, schema_editor):
    # Migrating notifications back must not leave a trigger that writes into a table being dropped.
    from notifications import outbox

    outbox.drop_trigger(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial"), ("devices", "0006_release_ip_indexes_transition_fk")]

    operations = [migrations.RunPython(install, drop)]
