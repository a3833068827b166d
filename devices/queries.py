"""What the dashboard pages read: scoping to the user's organizations, the Devices page's filters,
sort and pagination, and the aggregate counts.

Everything here is read-only. Every query is scoped by organization first, so it runs on the
(organization, column) indexes of Device and costs the same for a hundred devices or a hundred
thousand; counts come from one GROUP BY, never a query per row or per fleet. The search reads
DeviceSearch, the narrow copy of the searched columns that database triggers keep (devices/search.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import BooleanField, Count, F, Func, Q, QuerySet, Subquery, Value
from django.db.models.functions import Upper
from django.http import HttpRequest, QueryDict

from devices.models import TAG_KEY_REGEX, ColumnChoice, Device, DeviceSearch, DeviceTag, validate_tag_value
from devices.status import Status, UpdateStatus
from fleets import counts as kept_counts
from fleets.models import Fleet, Membership, Organization

PAGE_SIZE = 50
MAX_SEARCH_LENGTH = 100
STATUS_SLUGS: tuple[str, ...] = tuple(s.value for s in Status)
# ?update_status= takes the stored value, with _ or - for its space ("applying_changes").
UPDATE_STATUS_VALUES: tuple[str, ...] = tuple(u.value for u in UpdateStatus)
# ?tag=key:value, repeatable (every tag must match); more would be a query, not a view.
MAX_TAG_FILTERS = 10

# Sortable columns, in the table's order: URL key -> (label, fields). The pk is always appended as the tiebreaker so the
# order is total and a page boundary never shows a device twice or skips one. Every sort has an index
# that yields the page in order: (organization, field[, name]) on devices, and for the fleet sort
# (organization, name) on fleets (devices/models.py, migration 0005; order_devices). A status
# filter sorted by last seen has (organization, status, last seen) in both directions (0010).
SORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "name": ("Name", ("name",)),
    "status": ("Status", ("overall_status", "name")),
    "uuid": ("UUID", ("uuid",)),
    "fleet": ("Fleet", ("fleet__name", "name")),
    "device_type": ("Device type", ("device_type", "name")),
    "os": ("OS", ("os_version", "name")),
    "release": ("Release", ("release", "name")),
    "ip": ("IP address", ("ip_address", "name")),
    "last_seen": ("Last seen", ("last_seen_at",)),
    "heartbeat": ("Heartbeat", ("api_heartbeat_state", "name")),
    "cloudlink": ("Cloudlink", ("is_connected_to_vpn", "name")),
    "update_status": ("Update status", ("update_status", "name")),
    "update_status_since": ("Update status since", ("update_status_changed_at",)),
}
DEFAULT_SORT = "name"
# Fields that may be NULL: never-seen devices go last in both directions (and on both databases,
# which disagree about where NULL sorts by default).
NULLABLE_SORT_FIELDS = {"last_seen_at", "update_status_changed_at"}
# (update_status is NULL until a device reports one; it sorts as PostgreSQL puts NULLs, last
# ascending and first descending, so that one (organization, update_status, name) index serves both.)

# The Devices table's columns in their order (key -> label): the sortable ones, and Tags (not
# sortable) right after the fleet, the two ways a fleet is sliced side by side. Name and Status are
# always shown; users choose among the others (?cols=, or their own choice kept by devices/columns.py).
COLUMNS: dict[str, str] = {}
for _key, (_label, _) in SORTS.items():
    COLUMNS[_key] = _label
    if _key == "fleet":
        COLUMNS["tags"] = "Tags"
FIXED_COLUMNS: tuple[str, ...] = ("name", "status")
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(k for k in COLUMNS if k not in FIXED_COLUMNS)
# Without a choice: what tells an operator what is wrong, within a 1,280 px window with no horizontal
# scrolling (checked in a browser: tests/e2e, the columns journey).
DEFAULT_COLUMNS: tuple[str, ...] = ("fleet", "tags", "release", "last_seen", "heartbeat", "cloudlink")

# The columns the Devices table shows (and the badge reads): loading the other ~40 of every row
# would cost more than rendering it.
ROW_FIELDS: tuple[str, ...] = (
    "uuid",
    "name",
    "overall_status",
    "frozen_reason",
    "download_progress",
    "provisioning_progress",
    "organization_id",
    "fleet__name",
    "fleet__slug",
    "fleet__cloudlink_enabled",
    "device_type",
    "os_version",
    "release",
    "ip_address",
    "last_seen_at",
    "api_heartbeat_state",
    "last_api_heartbeat_at",
    "is_connected_to_vpn",
    "last_vpn_event",
    "last_connectivity_event",
    "cloudlink_enabled",
    "update_status",
    "update_status_changed_at",
)

SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")
FLEET_PARAM_RE = re.compile(r"^(?:(?P<org>[-a-zA-Z0-9_]{1,50})/)?(?P<fleet>[-a-zA-Z0-9_]{1,50})$")
HEX_RE = re.compile(r"^[0-9a-f]{1,62}$")
IP_FRAGMENT_RE = re.compile(r"^[0-9a-fA-F:.]*[.:][0-9a-fA-F:.]*$")


# --- Scoping --------------------------------------------------------------------------------------


def user_organizations(request: HttpRequest) -> list[Organization]:
    """The organizations the logged-in user is a member of, read once per request.

    The views scope every query with it and the context processor shows it, so it is cached on the
    request rather than queried twice.
    """
    cached = getattr(request, "_fleetstatus_organizations", None)
    if cached is None:
        user = request.user
        if not user.is_authenticated:
            cached = []
        else:
            # member_role (the user's role there) lets pages check ownership without another query;
            # device_columns (the user's own, the same on every row) gives the Devices page the
            # user's column choice without a query of its own.
            cached = list(
                Organization.objects.filter(memberships__user=user)
                .annotate(
                    member_role=F("memberships__role"),
                    device_columns=Subquery(ColumnChoice.objects.filter(user=user).values("columns")[:1]),
                )
                .order_by("name", "pk")
            )
        request._fleetstatus_organizations = cached
    return cached


def user_columns(request: HttpRequest) -> tuple[str, ...]:
    """The optional Devices columns the logged-in user chose (DEFAULT_COLUMNS when none), read with
    the user's organizations; only a user of no organization costs a query of its own."""
    organizations = user_organizations(request)
    if organizations:
        stored = organizations[0].device_columns
    else:
        stored = ColumnChoice.objects.filter(user=request.user).values_list("columns", flat=True).first()
    if stored is None:
        return DEFAULT_COLUMNS
    # Read leniently: a column a later version no longer has is simply not shown.
    keys = set(stored.split(","))
    return tuple(k for k in OPTIONAL_COLUMNS if k in keys)


def owned_organizations(request: HttpRequest) -> list[Organization]:
    """The organizations the logged-in user owns (from the memberships the request has read)."""
    return [o for o in user_organizations(request) if o.member_role == Membership.Role.OWNER]


def scoped_devices(organizations: Iterable[Organization]) -> QuerySet[Device]:
    return Device.objects.filter(organization_id__in=[o.pk for o in organizations])


# --- The Devices page's query parameters -------------------------------------------------------------


@dataclass
class DeviceQuery:
    """The validated view the URL asks for. `notices` explains every value that was ignored."""

    statuses: list[str] = field(default_factory=list)
    fleets: list[Fleet] = field(default_factory=list)
    fleet_param: str = ""
    q: str = ""
    # (key, value) pairs, each of which a device must have.
    tags: list[tuple[str, str]] = field(default_factory=list)
    update_statuses: list[str] = field(default_factory=list)
    # The organizations the query was parsed for: the tag filter is scoped to them.
    organization_ids: list[int] = field(default_factory=list)
    sort: str = DEFAULT_SORT
    descending: bool = False
    page: int = 1
    page_given: bool = False
    notices: list[str] = field(default_factory=list)
    # A well-formed fleet slug that is not among the user's organizations: the page answers 404
    # (whether the fleet exists elsewhere or nowhere, so the answer reveals nothing).
    fleet_not_found: bool = False
    # The optional columns ?cols= names, in table order; None when the URL names none (the user's
    # own choice applies then).
    columns: tuple[str, ...] | None = None

    @property
    def sort_param(self) -> str:
        return f"-{self.sort}" if self.descending else self.sort

    @property
    def cols_param(self) -> str:
        return ",".join(self.columns or ())

    @property
    def fleet(self) -> Fleet | None:
        return self.fleets[0] if len(self.fleets) == 1 else None

    @property
    def narrowed(self) -> bool:
        """Filters the kept per-status counts cannot answer: the devices themselves are counted."""
        return bool(self.q or self.tags or self.update_statuses)


def parse_tag_filter(value: str) -> tuple[str, str] | str:
    """ "key:value" -> (key, value), or the reason it is not a tag filter."""
    key, sep, tag_value = value.strip().partition(":")
    if not sep or not re.fullmatch(TAG_KEY_REGEX, key):
        return f"Tag filter {value[:70]!r} is not key:value with a key of a-z, 0-9, _ . - (at most 64)."
    try:
        validate_tag_value(tag_value)
    except ValidationError:
        return f"Tag filter {value[:70]!r} has no value or one that is not 1 to 200 printable characters."
    return key, tag_value


def parse_update_status(value: str) -> str | None:
    normalized = value.strip().lower().replace("_", " ").replace("-", " ")
    return normalized if normalized in UPDATE_STATUS_VALUES else None


def parse_device_query(params: QueryDict | Mapping, organizations: list[Organization]) -> DeviceQuery:
    """Validate the Devices page's query parameters; never raises for bad input."""
    query = DeviceQuery(organization_ids=[o.pk for o in organizations])
    getlist = params.getlist if hasattr(params, "getlist") else lambda k: [params[k]] if k in params else []

    unknown = []
    for value in getlist("status"):
        value = value.strip()
        if value in STATUS_SLUGS:
            if value not in query.statuses:
                query.statuses.append(value)
        elif value:
            unknown.append(value)
    if unknown:
        query.notices.append(
            f"Unknown status {', '.join(repr(v[:40]) for v in unknown)} ignored. "
            f"Known statuses: {', '.join(STATUS_SLUGS)}."
        )

    _parse_tags(query, getlist("tag"))
    _parse_update_statuses(query, getlist("update_status"))

    fleet_values = [v.strip() for v in getlist("fleet") if v.strip()]
    if len(fleet_values) > 1:
        query.notices.append("Only one fleet can be chosen at a time; showing all fleets.")
    elif fleet_values:
        _parse_fleet(query, fleet_values[0], organizations)

    q_values = getlist("q")
    q = (q_values[-1] if q_values else "").strip()
    if len(q) > MAX_SEARCH_LENGTH:
        query.notices.append(f"The search is longer than {MAX_SEARCH_LENGTH} characters; showing all devices.")
    elif "\x00" in q:
        query.notices.append("The search contains a NUL character; showing all devices.")
    else:
        query.q = q

    sort_values = getlist("sort")
    sort = (sort_values[-1] if sort_values else "").strip()
    if sort:
        key = sort[1:] if sort.startswith("-") else sort
        if key in SORTS:
            query.sort, query.descending = key, sort.startswith("-")
        else:
            query.notices.append(
                f"Cannot sort by {sort[:40]!r}; sorted by name. Sortable: {', '.join(SORTS)} (prefix - for descending)."
            )

    cols_values = getlist("cols")
    if cols_values:
        query.columns, notice = parse_columns(cols_values)
        if notice:
            query.notices.append(notice)

    page_values = getlist("page")
    number, notice = parse_page_number(page_values[-1] if page_values else "")
    if number is not None:
        query.page, query.page_given = number, True
    elif notice:
        query.notices.append(notice)
    return query


def parse_columns(values: list[str]) -> tuple[tuple[str, ...] | None, str | None]:
    """?cols= values (comma-separated, the parameter may repeat) -> the optional columns they name,
    in table order, and a notice naming what was ignored. Naming Name or Status is allowed (they are
    always shown); `cols=` alone means no optional column. A value naming no column at all is
    ignored whole (None): the user's own columns apply."""
    keys = [k.strip() for value in values for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in COLUMNS]
    chosen = tuple(k for k in OPTIONAL_COLUMNS if k in keys)
    if not unknown:
        return chosen, None
    named = ", ".join(repr(k[:40]) for k in unknown[:5]) + (", …" if len(unknown) > 5 else "")
    known = f"Columns: {', '.join(OPTIONAL_COLUMNS)} (Name and Status are always shown)."
    if len(unknown) == len(keys):
        return None, f"Unknown column {named} ignored; showing your columns. {known}"
    return chosen, f"Unknown column {named} ignored. {known}"


def _parse_tags(query: DeviceQuery, values: list[str]) -> None:
    for value in values:
        if not value.strip():
            continue
        parsed = parse_tag_filter(value)
        if isinstance(parsed, str):
            query.notices.append(f"{parsed} Ignored.")
        elif len(query.tags) >= MAX_TAG_FILTERS:
            query.notices.append(f"At most {MAX_TAG_FILTERS} tag filters; {value[:70]!r} ignored.")
        elif parsed not in query.tags:
            query.tags.append(parsed)


def _parse_update_statuses(query: DeviceQuery, values: list[str]) -> None:
    unknown = []
    for value in values:
        parsed = parse_update_status(value)
        if parsed is not None:
            if parsed not in query.update_statuses:
                query.update_statuses.append(parsed)
        elif value.strip():
            unknown.append(value)
    if unknown:
        query.notices.append(
            f"Unknown update status {', '.join(repr(v[:40]) for v in unknown)} ignored. "
            f"Known: {', '.join(UPDATE_STATUS_VALUES)}."
        )


def _parse_fleet(query: DeviceQuery, value: str, organizations: list[Organization]) -> None:
    match = FLEET_PARAM_RE.match(value)
    if not match:
        query.notices.append(f"{value[:60]!r} is not a fleet name; showing all fleets.")
        return
    fleets = Fleet.objects.filter(organization__in=organizations, slug=match["fleet"]).select_related("organization")
    if match["org"]:
        fleets = fleets.filter(organization__slug=match["org"])
    found = list(fleets.order_by("organization__name", "pk"))
    if found:
        query.fleets, query.fleet_param = found, value
    else:
        query.fleet_not_found = True
        query.notices.append(f"There is no fleet {value!r} in your organizations; showing all fleets.")


def search_condition(q: str) -> Q:
    """On DeviceSearch: name contains q in any case (the rows hold UPPER(name), and q is upper-cased
    by the same database function), or the UUID starts with q, or an IP address contains q."""
    condition = Q(name__contains=Upper(Value(q)))
    lowered = q.lower()
    if HEX_RE.match(lowered):
        condition |= Q(uuid__startswith=lowered)
    if IP_FRAGMENT_RE.match(q):
        condition |= Q(ip_address__contains=q)
    return condition


class HasTags(Func):
    """On DeviceSearch: the device has every one of these (key, value) tags.

    PostgreSQL: the tag lines as an array contain the wanted ones, the expression of the GIN index
    devsearch_tags (migration 0011), which intersects the tags' devices in one lookup. SQLite:
    each wanted line is in the lines."""

    output_field = BooleanField()

    def __init__(self, tags: Iterable[tuple[str, str]]) -> None:
        super().__init__(F("tags"))
        self.lines = [f"{key}={value}" for key, value in tags]

    def as_sql(self, compiler, connection, **extra_context):
        column, params = compiler.compile(self.source_expressions[0])
        sql = " AND ".join(f"instr(char(10) || {column} || char(10), %s) > 0" for _ in self.lines)
        return f"({sql})", [value for line in self.lines for value in (*params, f"\n{line}\n")]

    def as_postgresql(self, compiler, connection, **extra_context):
        column, params = compiler.compile(self.source_expressions[0])
        return f"string_to_array({column}, chr(10)) @> %s::text[]", [*params, self.lines]


def search_matches(query: DeviceQuery) -> QuerySet[DeviceSearch]:
    """The search rows of the devices `query.q` and `query.tags` find, in its organizations (and
    fleets).

    The search reads this narrow copy (devices/search.py), not the device table: its trigram
    indexes find a rare match, its tag index the devices with every tag asked for, and a one- or
    two-character search reads the organization's rows here rather than the much wider devices."""
    rows = DeviceSearch.objects.filter(organization_id__in=query.organization_ids)
    if query.fleets:
        rows = rows.filter(fleet_id__in=[f.pk for f in query.fleets])
    if query.q:
        rows = rows.filter(search_condition(query.q))
    if query.tags:
        rows = rows.filter(HasTags(query.tags))
    return rows


def page_from_search(query: DeviceQuery) -> bool:
    """Whether the page's device ids come from the search rows alone (search_page_ids): sorted by
    name and narrowed by a search or tags, and by nothing those rows do not hold."""
    return query.sort == "name" and bool(query.q or query.tags) and not query.update_statuses


def search_page_ids(query: DeviceQuery) -> QuerySet[DeviceSearch]:
    """The matching device ids in the page's order (name, then id), from the search rows: walked
    in order on (organization, name, device) when matches are common, sorted among the few
    otherwise; either way the rows read are narrow, and only the page's devices are fetched."""
    rows = search_matches(query)
    if query.statuses:
        rows = rows.filter(overall_status__in=query.statuses)
    order = ("-sort_name", "-device_id") if query.descending else ("sort_name", "device_id")
    return rows.order_by(*order).values_list("device_id", flat=True)


def filter_devices(devices: QuerySet[Device], query: DeviceQuery, *, with_status: bool = True) -> QuerySet[Device]:
    if query.fleets:
        devices = devices.filter(fleet_id__in=[f.pk for f in query.fleets])
    if query.q or query.tags:
        devices = devices.filter(pk__in=search_matches(query).values("device_id"))
    if query.update_statuses:
        devices = devices.filter(update_status__in=query.update_statuses)
    if with_status and query.statuses:
        devices = devices.filter(overall_status__in=query.statuses)
    return devices


def device_tags(device_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """{device id: {key: value}} of the given devices in ONE query (the page's rows, an export chunk)."""
    tags: dict[int, dict[str, str]] = {}
    rows = DeviceTag.objects.filter(device_id__in=list(device_ids)).order_by("device_id", "key")
    for device_id, key, value in rows.values_list("device_id", "key", "value"):
        tags.setdefault(device_id, {})[key] = value
    return tags


def order_devices(devices: QuerySet[Device], query: DeviceQuery) -> QuerySet[Device]:
    fields = SORTS[query.sort][1]
    ordering = []
    for name in (*fields, "pk"):
        expression = F(name)
        nulls_last = True if name in NULLABLE_SORT_FIELDS else None
        ordering.append(
            expression.desc(nulls_last=nulls_last) if query.descending else expression.asc(nulls_last=nulls_last)
        )
    if query.sort == "fleet":
        # Always true (a device's fleet is in its organization: services refuse a move across
        # organizations), but with it PostgreSQL knows the fleets' organization too, walks them in
        # name order ((organization, name) on fleets) and reads each fleet's devices, rather than
        # joining and sorting every device of the organization for one page.
        devices = devices.filter(fleet__organization_id=F("organization_id"))
    return devices.order_by(*ordering)


# --- Counts ------------------------------------------------------------------------------------------


def status_counts(devices: QuerySet[Device] | QuerySet[DeviceSearch]) -> dict[str, int]:
    """Devices per status in one GROUP BY; every status present, zeros included.

    For a set the kept counts cannot answer (a search); COUNT(*), not COUNT(id): it needs no
    column, so PostgreSQL can answer from an index alone."""
    counts = dict.fromkeys(STATUS_SLUGS, 0)
    rows = devices.order_by().values_list("overall_status").annotate(n=Count("*"))
    for status, n in rows:
        counts[status] = n
    return counts


def device_status_counts(organizations: list[Organization], query: DeviceQuery) -> dict[str, int]:
    """The Devices page's counts: every filter of `query` but the status one, in one query.

    Organizations and fleets come from the counts the database keeps (fleets/counts.py): the same
    cost for a hundred devices or a million. A search or a tag filter counts the narrow search rows
    it matches; only an update status filter, which those rows do not hold, counts the devices.
    """
    if (query.q or query.tags) and not query.update_statuses:
        # The search rows carry the status: counting a broad search (one letter matches most
        # devices) or a common tag reads those narrow rows alone, not the devices.
        return status_counts(search_matches(query))
    if query.narrowed:
        return status_counts(filter_devices(scoped_devices(organizations), query, with_status=False))
    fleet_ids = [f.pk for f in query.fleets] if query.fleets else None
    return kept_counts.status_counts([o.pk for o in organizations], fleet_ids)


def fleet_status_counts(organizations: list[Organization]) -> dict[int, dict[str, int]]:
    """{fleet id: {status: count}} for every fleet of the organizations, in one query over the kept counts."""
    return kept_counts.fleet_status_counts([o.pk for o in organizations])


# --- Pagination ----------------------------------------------------------------------------------------


def parse_page_number(value: str) -> tuple[int | None, str | None]:
    """The page a query string asks for: (its number, or None when not given or unusable; a notice
    when unusable). The Devices and Fleets pages both read ?page= with it."""
    value = value.strip()
    if not value:
        return None, None
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    if value.isdecimal() and 0 < int(value) < 10**9:
        return int(value), None
    return None, f"Page {value[:20]!r} is not a page number; showing the first page."


def page_of(paginator: Paginator, number: int) -> tuple[Page, str | None]:
    """Page `number`, or the last page with a notice when there are fewer."""
    if number > paginator.num_pages:
        return paginator.page(paginator.num_pages), (
            f"There is no page {number}; showing the last page ({paginator.num_pages})."
        )
    return paginator.page(number), None


def paginate(devices: QuerySet[Device], total: int, query: DeviceQuery) -> tuple[Page, str | None]:
    """A page of `devices`, whose size is already known from the status counts.

    The Paginator would otherwise run a COUNT(*) over every matching row on each request. Returns
    the page and a notice when the requested page does not exist.
    """
    paginator = Paginator(devices, PAGE_SIZE)
    paginator.count = total  # cached_property: setting it skips the COUNT query
    return page_of(paginator, query.page)
