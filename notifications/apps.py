from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _outbox_trigger_after_migrate(sender, using, **kwargs) -> None:
    """(Re-)install the outbox trigger after every migrate: SQLite drops a table's triggers when a
    migration rebuilds it."""
    from django.db import connections

    from notifications import outbox

    connection = connections[using]
    tables = set(connection.introspection.table_names())
    if {outbox.TRANSITIONS, outbox.OUTBOX, outbox.CHANNELS} <= tables:
        outbox.install_trigger(connection)


class NotificationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "notifications"

    def ready(self) -> None:
        post_migrate.connect(_outbox_trigger_after_migrate, sender=self, dispatch_uid="notifications.outbox")
