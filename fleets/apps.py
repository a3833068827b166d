from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _status_counts_after_migrate(sender, using, **kwargs) -> None:
    """Re-install the count triggers if a migration dropped them (SQLite rebuilds a table to alter
    it, and its triggers go with it) and then recount. SQLite always recounts (cheap there): a
    flush empties its tables one DELETE at a time, in no fixed order, so the device deletions'
    deltas may land after the deltas table was emptied. PostgreSQL's flush is one TRUNCATE (the
    TRUNCATE trigger empties the counts), and its triggers survive ALTER TABLE, so a deploy's
    `migrate` does not lock device writes out for a recount it does not need."""
    from django.db import connections

    from fleets import counts

    connection = connections[using]
    tables = set(connection.introspection.table_names())
    if not {counts.COUNTS, counts.DELTAS, counts.DEVICES} <= tables:
        return  # migrated back before the count tables
    if counts.install_triggers(connection) or connection.vendor != "postgresql":
        counts.rebuild(connection)


class FleetsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "fleets"

    def ready(self) -> None:
        post_migrate.connect(_status_counts_after_migrate, sender=self, dispatch_uid="fleets.status_counts")
