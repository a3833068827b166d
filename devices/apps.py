from django.apps import AppConfig
from django.db.models.signals import post_delete


def _forget_deleted_device(sender, instance, **kwargs) -> None:
    from devices.live import devcache

    devcache.forget_devices([instance.uuid])


def _forget_deleted_fleet(sender, instance, **kwargs) -> None:
    from devices.live import devcache

    devcache.forget_fleets([instance.pk])


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
