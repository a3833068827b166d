from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _status_counts_after_migrate(sender, using, **kwargs) -> None:
    """Re-install the count triggers if a migration dropped them (SQLite rebuilds a table to alter
    it, and its triggers go with it) and recount, so counts are exact after every `migrate` and
    after a test flush (which empties tables without firing PostgreSQL triggers in order)."""
    from django.db import connections

    from fleets import counts

    connection = connections[using]
    tables = set(connection.introspection.table_names())
    if not {counts.COUNTS, counts.DELTAS, counts.DEVICES} <= tables:
        return  # migrated back before the count tables
    counts.install_triggers(connection)
    counts.rebuild(connection)


class FleetsConfig(AppConfig):
    default_auto_field = 'django.db.models.BigAutoField'
    name = 'fleets'

    def ready(self) -> None:
        post_migrate.connect(_status_counts_after_migrate, sender=self, dispatch_uid="fleets.status_counts")
