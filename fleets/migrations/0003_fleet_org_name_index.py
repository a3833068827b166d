"""(organization, name) on fleets: the Devices page's fleet sort (fleet name, device name) reads the
organization's fleets in name order and each fleet's devices through (fleet, ...), so a page costs
the devices of the fleets it shows, not a join and sort of all the organization's devices."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleets", "0002_status_counts"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="fleet",
            index=models.Index(fields=["organization", "name"], name="fleet_org_name"),
        ),
    ]
