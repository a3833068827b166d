"""Device tags (key=value labels): validating them and writing them, each change ONE statement.

A bulk assignment is one INSERT ... SELECT ... ON CONFLICT over the selected devices, so tagging
the devices of a whole selection costs one round trip however many there are, and never reads them
into Python. A tag is not a status input: nothing here touches the device rows or their status.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import QuerySet

from devices.models import TAG_KEY_REGEX, Device, DeviceTag, validate_tag_value
from devices.services.changes import DeviceChangeError

KEY_MESSAGE = "A tag key is 1 to 64 characters of a-z, 0-9, underscore, dot and hyphen"


class TagError(DeviceChangeError):
    """A tag or assignment that is not well formed (the message says why)."""


def check_tag(key: str, value: str | None) -> None:
    """Raise TagError unless `key` (and `value`, unless None: a removal) are a valid tag."""
    if not re.fullmatch(TAG_KEY_REGEX, key):
        raise TagError(f"{KEY_MESSAGE}; {key[:70]!r} is not.")
    if value is not None:
        try:
            validate_tag_value(value)
        except ValidationError as exc:
            raise TagError(f"{exc.messages[0]} The value of {key!r} is not.") from exc


def parse_assignment(text: str) -> tuple[str, str | None]:
    """ "key=value" -> (key, value); "key=" -> (key, None), which removes the tag. Raises TagError."""
    key, sep, value = text.strip().partition("=")
    if not sep:
        raise TagError(f"{text[:70]!r} is not key=value (key= with no value removes the tag).")
    key = key.strip()
    result = (key, value or None)
    check_tag(*result)
    return result


def set_tag(devices: QuerySet[Device], key: str, value: str | None) -> int:
    """Give every device of `devices` the tag key=value (value None: remove the key); ONE statement.

    Returns the number of tags written or removed. Raises TagError (nothing written) on a bad tag.
    """
    check_tag(key, value)
    selected = devices.order_by().values("pk")
    if value is None:
        deleted, _ = DeviceTag.objects.filter(device__in=selected, key=key).delete()
        return deleted
    qn = connection.ops.quote_name
    source, params = devices.order_by().values_list("pk", "organization_id").query.sql_with_params()
    # ON CONFLICT ... DO UPDATE (PostgreSQL and SQLite alike): re-tagging a device overwrites its
    # value for that key rather than failing on (device, key). (WHERE true: SQLite's parser needs it
    # to tell the upsert's ON from a join's.)
    sql = (
        f"INSERT INTO {qn(DeviceTag._meta.db_table)} ({qn('device_id')}, {qn('organization_id')}, {qn('key')}, "
        f"{qn('value')}) SELECT s.*, %s, %s FROM ({source}) AS s WHERE true "
        f"ON CONFLICT ({qn('device_id')}, {qn('key')}) DO UPDATE SET {qn('value')} = excluded.{qn('value')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [key, value, *params])
        return cursor.rowcount
