"""The Devices page's filters, strictly: the same parser and querysets (devices/queries.py), but an
unknown value is a 400 naming it rather than a notice, and pages are keyset cursors, not numbers.

A cursor holds the last row's sort values and id, signed so a client cannot forge one. The next
page is the rows after that tuple in the page's own order, read as one row comparison
`(sort fields..., id) > (values...)` on the (organization, field[, name]) index the sort already
uses: the 900th page costs what the first does, and devices changing status between pages move
only themselves (a device whose sort key did not change is seen exactly once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core import signing
from django.db import connection
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL
from django.http import QueryDict

from devices.models import Device
from devices.queries import (
    FLEET_PARAM_RE,
    MAX_SEARCH_LENGTH,
    MAX_TAG_FILTERS,
    NULLABLE_SORT_FIELDS,
    SORTS,
    STATUS_SLUGS,
    UPDATE_STATUS_VALUES,
    DeviceQuery,
    filter_devices,
    order_devices,
    parse_device_query,
    parse_tag_filter,
    parse_update_status,
    scoped_devices,
)
from fleets.models import Fleet, Organization

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CURSOR_SALT = "readapi.cursor"
DEVICE_PARAMS = frozenset({"status", "fleet", "q", "tag", "update_status", "sort", "limit", "cursor"})
# The page's sorts whose first field is NULL for many devices beyond last seen (which the cursor
# handles on its own): a keyset cursor cannot step over NULLs, so the API does not offer them.
API_SORTS: tuple[str, ...] = tuple(key for key in SORTS if key not in {"update_status", "update_status_since"})


class BadQuery(ValueError):
    """A parameter the API will not guess about: answered 400 with this message."""


class NotFound(LookupError):
    """A fleet outside the token's organizations: answered 404, as the pages do."""


def check_params(params: QueryDict, allowed: frozenset[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadQuery(
            f"Unknown parameter {', '.join(repr(k[:40]) for k in unknown)}; accepted: {', '.join(sorted(allowed))}."
        )
    for key, values in params.lists():
        if any("\x00" in v for v in values):
            raise BadQuery(f"Parameter {key!r} contains a NUL character.")


def single(params: QueryDict, key: str) -> str:
    values = params.getlist(key)
    if len(values) > 1:
        raise BadQuery(f"Parameter {key!r} may be given once.")
    return values[0].strip() if values else ""


def parse_limit(params: QueryDict) -> int:
    value = single(params, "limit")
    if not value:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadQuery(f"limit {value[:20]!r} is not a number from 1 to {MAX_LIMIT}.")
    return int(value)


def strict_device_query(params: QueryDict, organizations: list[Organization]) -> DeviceQuery:
    """parse_device_query, refusing what the page would ignore with a notice."""
    check_params(params, DEVICE_PARAMS)
    for value in params.getlist("status"):
        if value.strip() not in STATUS_SLUGS:
            raise BadQuery(f"Unknown status {value[:40]!r}; known statuses: {', '.join(STATUS_SLUGS)}.")
    fleet = single(params, "fleet")
    if params.getlist("fleet") and not FLEET_PARAM_RE.match(fleet):
        raise BadQuery(f"fleet {fleet[:60]!r} is not a fleet slug (or organization/fleet).")
    q = single(params, "q")
    if len(q) > MAX_SEARCH_LENGTH:
        raise BadQuery(f"q is longer than {MAX_SEARCH_LENGTH} characters.")
    tags = params.getlist("tag")
    for value in tags:
        parsed = parse_tag_filter(value)
        if isinstance(parsed, str):
            raise BadQuery(parsed)
    if len(tags) > MAX_TAG_FILTERS:
        raise BadQuery(f"At most {MAX_TAG_FILTERS} tag filters.")
    for value in params.getlist("update_status"):
        if parse_update_status(value) is None:
            raise BadQuery(
                f"Unknown update_status {value[:40]!r}; known: {', '.join(UPDATE_STATUS_VALUES)} "
                "(_ or - for the space)."
            )
    sort = single(params, "sort")
    if sort and sort.removeprefix("-") not in API_SORTS:
        raise BadQuery(f"Cannot sort by {sort[:40]!r}; sortable: {', '.join(API_SORTS)} (prefix - for descending).")
    page_params = QueryDict(mutable=True)
    for key in ("status", "fleet", "q", "tag", "update_status", "sort"):
        page_params.setlist(key, params.getlist(key))
    query = parse_device_query(page_params, organizations)
    if query.fleet_not_found:
        raise NotFound(f"There is no fleet {fleet!r} in your organizations.")
    if query.notices:  # anything the checks above did not foresee: refuse rather than guess
        raise BadQuery(" ".join(query.notices))
    return query


# --- Cursors ----------------------------------------------------------------------------------------


def _sort_columns(sort: str) -> list[tuple[str, str]]:
    """(SQL column, model field path) of each sort field and the id, as the page orders them."""
    qn = connection.ops.quote_name
    device, fleet = Device._meta.db_table, Fleet._meta.db_table
    columns = []
    for path in (*SORTS[sort][1], "pk"):
        if path == "fleet__name":
            columns.append((f"{qn(fleet)}.{qn('name')}", path))
        else:
            field = Device._meta.pk if path == "pk" else Device._meta.get_field(path)
            columns.append((f"{qn(device)}.{qn(field.column)}", path))
    return columns


def _encode_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode_value(path: str, value: Any) -> Any:
    if path == "pk":
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadQuery("Malformed cursor.")
        return value
    if path in NULLABLE_SORT_FIELDS:
        return None if value is None else datetime.fromisoformat(value)
    if path == "is_connected_to_vpn":
        if not isinstance(value, bool):
            raise BadQuery("Malformed cursor.")
        return value
    if not isinstance(value, str):
        raise BadQuery("Malformed cursor.")
    return value


def make_cursor(query: DeviceQuery, row: dict[str, Any]) -> str:
    values = [_encode_value(row[path]) for _, path in _sort_columns(query.sort)]
    return signing.dumps([query.sort_param, values], salt=CURSOR_SALT, compress=True)


def read_cursor(value: str, query: DeviceQuery) -> list[Any]:
    try:
        sort_param, values = signing.loads(value, salt=CURSOR_SALT)
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise BadQuery(f"cursor {value[:40]!r} is not a cursor this API issued.") from exc
    if sort_param != query.sort_param:
        raise BadQuery(f"This cursor belongs to sort={sort_param}; keep the sort of the first page.")
    paths = [path for _, path in _sort_columns(query.sort)]
    if not isinstance(values, list) or len(values) != len(paths):
        raise BadQuery("Malformed cursor.")
    try:
        return [_decode_value(path, v) for path, v in zip(paths, values, strict=True)]
    except (TypeError, ValueError) as exc:
        raise BadQuery("Malformed cursor.") from exc


def _after(rows: QuerySet[Device], query: DeviceQuery, values: list[Any]) -> QuerySet[Device]:
    columns = _sort_columns(query.sort)
    op = "<" if query.descending else ">"
    params = [connection.ops.adapt_datetimefield_value(v) if isinstance(v, datetime) else v for v in values]
    # The leading column's bound on its own as well: PostgreSQL derives it from the row comparison
    # when all columns are the device's, but not across the join of the fleet sort, where it lets
    # the walk over the organization's fleets start at the cursor's fleet.
    sql = f"({', '.join(c for c, _ in columns)}) {op} ({', '.join(['%s'] * len(columns))}) AND {columns[0][0]} {op}= %s"
    return rows.filter(RawSQL(sql, [*params, params[0]], output_field=BooleanField()))


@dataclass
class DevicePage:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def keyset_rows(organizations: list[Organization], query: DeviceQuery, values: list[Any] | None) -> QuerySet[Device]:
    """The page's ordered devices after the cursor's `values` (all of them when None)."""
    rows = order_devices(filter_devices(scoped_devices(organizations), query), query)
    if values is None:
        return rows
    if query.sort == "last_seen" and values[0] is None:
        # Never-seen devices come last in both directions, ordered by id alone.
        rows = rows.filter(last_seen_at__isnull=True)
        return rows.filter(pk__lt=values[-1]) if query.descending else rows.filter(pk__gt=values[-1])
    # A NULL sort value compares as unknown, so the row comparison leaves never-seen devices out;
    # device_page() reads them once the seen ones are exhausted.
    return _after(rows, query, values)


def device_page(
    organizations: list[Organization], query: DeviceQuery, fields: tuple[str, ...], limit: int, cursor: str
) -> DevicePage:
    """`limit` rows (as dicts of `fields`) after the cursor, and the cursor of the next page."""
    needed = tuple(dict.fromkeys((*fields, *(path for _, path in _sort_columns(query.sort)))))
    values = read_cursor(cursor, query) if cursor else None
    found = list(keyset_rows(organizations, query, values).values(*needed)[: limit + 1])
    if query.sort == "last_seen" and values is not None and values[0] is not None and len(found) <= limit:
        never_seen = keyset_rows(organizations, query, None).filter(last_seen_at__isnull=True)
        found += list(never_seen.values(*needed)[: limit + 1 - len(found)])
    more = len(found) > limit
    found = found[:limit]
    return DevicePage(found, make_cursor(query, found[-1]) if more else None)
