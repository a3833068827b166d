# Device counts per (organization, fleet, status), kept by triggers on devices_device (fleets/counts.py).

from django.db import migrations, models


def install(apps, schema_editor):
    from fleets import counts

    # The triggers first: once they exist, the SHARE lock rebuild() takes holds off device writes
    # until this transaction commits, so the initial counts are exact.
    counts.install_triggers(schema_editor.connection)
    counts.rebuild(schema_editor.connection)


def uninstall(apps, schema_editor):
    from fleets import counts

    counts.drop_triggers(schema_editor.connection)


class Migration(migrations.Migration):

    dependencies = [
        ('fleets', '0001_initial'),
        ('devices', '0003_device_api_key_hash_index'),
    ]

    operations = [
        migrations.CreateModel(
            name='StatusCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('organization_id', models.BigIntegerField()),
                ('fleet_id', models.BigIntegerField()),
                ('status', models.CharField(max_length=24)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('organization_id', 'fleet_id', 'status'), name='status_count_key')],
            },
        ),
        migrations.CreateModel(
            name='StatusCountDelta',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('organization_id', models.BigIntegerField()),
                ('fleet_id', models.BigIntegerField()),
                ('status', models.CharField(max_length=24)),
                ('n', models.BigIntegerField()),
            ],
            options={
                'indexes': [models.Index(fields=['organization_id', 'fleet_id'], name='status_delta_org_fleet')],
            },
        ),
        migrations.RunPython(install, uninstall),
    ]
