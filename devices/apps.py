from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate


def _forget_deleted_device(sender, instance, **kwargs) -> None:
    from devices.live import devcache

    devcache.forget_devices([instance.uuid])


def _forget_deleted_fleet(sender, instance, **kwargs) -> None:
    from devices.live import devcache

    devcache.forget_fleets([instance.pk])


def _search_after_migrate(sender, using, **kwargs) -> None:
    """Re-install the search triggers if a migration dropped them (a SQLite table rebuild does) and
    copy the devices again; SQLite always copies again (cheap there; a flush deletes table by table)."""
    from django.db import connections

    from devices import search

    connection = connections[using]
    if not {search.DEVICES, search.SEARCH} <= set(connection.introspection.table_names()):
        return  # migrated back before the search table
    if search.install_triggers(connection) or connection.vendor != "postgresql":
        search.rebuild(connection)


class DevicesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "devices"

    def ready(self) -> None:
        from devices import services
        from devices.live import heartbeats
        from devices.models import Device
        from fleets.models import Fleet

        # The Redis layer never imports the services (they import it): the services are its database side.
        heartbeats.use_database(services)
        # A deleted device must not keep answering fetches from the device cache (devices.live.devcache).
        post_delete.connect(_forget_deleted_device, sender=Device, dispatch_uid="devices.devcache.device")
        post_delete.connect(_forget_deleted_fleet, sender=Fleet, dispatch_uid="devices.devcache.fleet")
        post_migrate.connect(_search_after_migrate, sender=self, dispatch_uid="devices.search")
