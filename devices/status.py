"""The status rule (docs/design.md, Statuses), defined once.

`RULES` is the first-match-wins table as data. `compute_status()` evaluates it in Python for one
device; `status_expression()` compiles the same table into a `Case(When(...))` for the database.
Both read the same signal names, so they cannot drift apart (tests/test_status_rule.py checks every
combination of inputs against both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce


class Status(models.TextChoices):
    ONLINE = "online", "Online"
    ONLINE_VPN_ONLY = "online-vpn-only", "Online (VPN Only)"
    ONLINE_HEARTBEAT_ONLY = "online-heartbeat-only", "Online (Heartbeat Only)"
    OFFLINE = "offline", "Offline"
    CONFIGURING = "configuring", "Configuring"
    UPDATING = "updating", "Updating"
    POST_PROVISIONING = "post-provisioning", "Post Provisioning"
    INACTIVE = "inactive", "Inactive"
    FROZEN = "frozen", "Frozen"


class HeartbeatState(models.TextChoices):
    UNKNOWN = "unknown", "Never"
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"


class UpdateStatus(models.TextChoices):
    # Declared in precedence order: across releases the lowest one wins.
    REJECTED = "rejected", "Rejected"
    ABORTED = "aborted", "Aborted"
    DOWNLOADING = "downloading", "Downloading"
    DOWNLOADED = "downloaded", "Downloaded"
    APPLYING_CHANGES = "applying changes", "Applying changes"
    DONE = "done", "Done"


UPDATE_STATUS_PRECEDENCE = [choice.value for choice in UpdateStatus]

# Footnote markers of the two partial states (docs/design.md, Statuses).
FOOTNOTE_MARKERS = {Status.ONLINE_VPN_ONLY: "¹", Status.ONLINE_HEARTBEAT_ONLY: "²"}

POST_PROVISIONING_STATE = "Post-Provisioning"


# --- A tiny condition language that can run in Python and in SQL -----------------------------


Test = Callable[[Mapping[str, Any]], bool]
# For Cond.sql: (SQL fragment of a signal, or "%s" with the signal bound as a parameter).
Source = Callable[[str], str]


def _literal(value: Any) -> str:
    """A rule constant (a slug or a flag, written in this module) as an SQL literal."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''").replace("%", "%%") + "'"
    raise TypeError(f"no SQL literal for {value!r}")


def _fragment(source: Source, signal: str, params: list[str]) -> str:
    fragment = source(signal)
    params.extend([signal] * fragment.count("%s"))
    return fragment


class Cond:
    def test(self, s: Mapping[str, Any]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def compile(self) -> Test:  # pragma: no cover - abstract
        """The same test as one closure: no dataclass attribute reads per call (bulk paths call
        compute_status for thousands of rows)."""
        raise NotImplementedError

    def q(self) -> Q:  # pragma: no cover - abstract
        raise NotImplementedError

    def sql(self, source: Source, params: list[str]) -> str:  # pragma: no cover - abstract
        """The same test as SQL text over source(signal) fragments; never NULL (two-valued, as in Python).

        Appends to params the signal of every %s placeholder that source() put in the text.
        """
        raise NotImplementedError

    def __and__(self, other: Cond) -> Cond:
        return All((self, other))

    def __or__(self, other: Cond) -> Cond:
        return AnyOf((self, other))

    def __invert__(self) -> Cond:
        return Not(self)


@dataclass(frozen=True)
class Is(Cond):
    """signal == value, or signal in values when value is a tuple. Never matches NULL."""

    signal: str
    value: Any

    def test(self, s: Mapping[str, Any]) -> bool:
        actual = s[self.signal]
        if isinstance(self.value, tuple):
            return actual is not None and actual in self.value
        return actual is not None and actual == self.value

    def compile(self) -> Test:
        signal, value = self.signal, self.value
        if isinstance(value, tuple):
            return lambda s: (actual := s[signal]) is not None and actual in value
        return lambda s: (actual := s[signal]) is not None and actual == value

    def q(self) -> Q:
        lookup = "in" if isinstance(self.value, tuple) else "exact"
        return Q(**{f"{self.signal}__{lookup}": self.value})

    def sql(self, source: Source, params: list[str]) -> str:
        actual = _fragment(source, self.signal, params)
        if isinstance(self.value, tuple):
            return f"COALESCE({actual} IN ({', '.join(_literal(v) for v in self.value)}), FALSE)"
        return f"COALESCE({actual} = {_literal(self.value)}, FALSE)"


@dataclass(frozen=True)
class IsNull(Cond):
    signal: str

    def test(self, s: Mapping[str, Any]) -> bool:
        return s[self.signal] is None

    def compile(self) -> Test:
        signal = self.signal
        return lambda s: s[signal] is None

    def q(self) -> Q:
        return Q(**{f"{self.signal}__isnull": True})

    def sql(self, source: Source, params: list[str]) -> str:
        return f"({_fragment(source, self.signal, params)} IS NULL)"


@dataclass(frozen=True)
class Not(Cond):
    # Django negates a lookup on a nullable column as "NOT (x = v AND x IS NOT NULL)", so NULL
    # rows match the negation, as they do in Python. Is() never matches NULL on either side.
    inner: Cond

    def test(self, s: Mapping[str, Any]) -> bool:
        return not self.inner.test(s)

    def compile(self) -> Test:
        inner = self.inner.compile()
        return lambda s: not inner(s)

    def q(self) -> Q:
        return ~self.inner.q()

    def sql(self, source: Source, params: list[str]) -> str:
        return f"(NOT {self.inner.sql(source, params)})"


@dataclass(frozen=True)
class All(Cond):
    parts: tuple[Cond, ...]

    def test(self, s: Mapping[str, Any]) -> bool:
        return all(p.test(s) for p in self.parts)

    def compile(self) -> Test:
        parts = tuple(p.compile() for p in self.parts)

        def test(s: Mapping[str, Any]) -> bool:
            for part in parts:
                if not part(s):
                    return False
            return True

        return test

    def q(self) -> Q:
        q = Q()
        for p in self.parts:
            q &= p.q()
        return q

    def sql(self, source: Source, params: list[str]) -> str:
        return "(" + " AND ".join(p.sql(source, params) for p in self.parts) + ")"


@dataclass(frozen=True)
class AnyOf(Cond):
    parts: tuple[Cond, ...]

    def test(self, s: Mapping[str, Any]) -> bool:
        return any(p.test(s) for p in self.parts)

    def compile(self) -> Test:
        parts = tuple(p.compile() for p in self.parts)

        def test(s: Mapping[str, Any]) -> bool:
            for part in parts:
                if part(s):
                    return True
            return False

        return test

    def q(self) -> Q:
        q = Q()
        for p in self.parts:
            q |= p.q()
        return q

    def sql(self, source: Source, params: list[str]) -> str:
        return "(" + " OR ".join(p.sql(source, params) for p in self.parts) + ")"


# --- The table (docs/design.md, Statuses), first match wins ----------------------------------

vpn = Is("is_connected_to_vpn", True)
no_vpn = Is("is_connected_to_vpn", False)
hb_online = Is("api_heartbeat_state", HeartbeatState.ONLINE.value)

RULES: tuple[tuple[Status, Cond], ...] = (
    (Status.INACTIVE, Is("is_active", False)),
    (Status.FROZEN, Is("is_frozen", True)),
    (Status.POST_PROVISIONING, Is("provisioning_state", POST_PROVISIONING_STATE)),
    (
        Status.CONFIGURING,
        no_vpn & IsNull("last_connectivity_event") & Is("api_heartbeat_state", HeartbeatState.UNKNOWN.value),
    ),
    (Status.OFFLINE, no_vpn & Is("api_heartbeat_state", (HeartbeatState.OFFLINE.value, HeartbeatState.UNKNOWN.value))),
    (
        Status.UPDATING,
        hb_online
        & (
            Is("update_status", UpdateStatus.DOWNLOADING.value)
            | (Is("status", "Downloading") & Not(IsNull("download_progress")))
        ),
    ),
    (Status.CONFIGURING, Not(IsNull("provisioning_progress"))),
    (Status.ONLINE_VPN_ONLY, vpn & Not(hb_online)),
    (Status.ONLINE_HEARTBEAT_ONLY, no_vpn & hb_online & Is("effective_cloudlink", True)),
)
DEFAULT_STATUS = Status.ONLINE

# Every signal the rule reads. `effective_cloudlink` is derived: the device's override, else its
# fleet's switch (see `annotate_signals`).
SIGNALS: tuple[str, ...] = (
    "is_active",
    "is_frozen",
    "provisioning_state",
    "provisioning_progress",
    "api_heartbeat_state",
    "is_connected_to_vpn",
    "last_connectivity_event",
    "update_status",
    "status",
    "download_progress",
    "effective_cloudlink",
)


# RULES compiled to closures once: compute_status is called per row by the bulk paths (tunnel
# events, the sweep), so it must cost microseconds. tests/test_status_rule.py checks it, the
# interpreted Cond.test and the SQL expression against the design table for every combination.
_COMPILED_RULES: tuple[tuple[Status, Test], ...] = tuple((status, cond.compile()) for status, cond in RULES)


def compute_status(signals: Mapping[str, Any]) -> Status:
    """The status for one device, from a mapping of SIGNALS (see `signals_of`)."""
    for status, test in _COMPILED_RULES:
        if test(signals):
            return status
    return DEFAULT_STATUS


def compute_status_interpreted(signals: Mapping[str, Any]) -> Status:
    """compute_status evaluated by walking RULES (the reference the compiled form is tested against)."""
    for status, cond in RULES:
        if cond.test(signals):
            return status
    return DEFAULT_STATUS


def effective_cloudlink_expression() -> Coalesce:
    """devices.models.effective_cloudlink as a query expression: the device's override, else its fleet's."""
    return Coalesce(F("cloudlink_enabled"), F("fleet__cloudlink_enabled"), output_field=models.BooleanField())


def annotate_signals(queryset: models.QuerySet) -> models.QuerySet:
    return queryset.annotate(effective_cloudlink=effective_cloudlink_expression())


def status_expression() -> Case:
    """The same rule as a database expression; needs `annotate_signals()` on the queryset."""
    return Case(
        *[When(cond.q(), then=Value(status.value)) for status, cond in RULES],
        default=Value(DEFAULT_STATUS.value),
        output_field=models.CharField(),
    )


def status_sql(source: Source) -> tuple[str, tuple[str, ...]]:
    """The same rule as one SQL CASE in text, for the statements of devices/services/sql.py.

    source(signal) gives each signal's SQL: a column, or "%s" where the statement binds a value it
    is about to write (a report's or a tunnel event's), so the status is decided on the row as it
    will be, inside the statement that writes it. Returns the text and the signal of each %s in
    order. Every condition is two-valued as in Python, so a NULL decides nothing by accident.
    """
    params: list[str] = []
    whens = " ".join(f"WHEN {cond.sql(source, params)} THEN {_literal(status.value)}" for status, cond in RULES)
    return f"CASE {whens} ELSE {_literal(DEFAULT_STATUS.value)} END", tuple(params)


def with_computed_status(queryset: models.QuerySet, name: str = "computed_status") -> models.QuerySet:
    return annotate_signals(queryset).annotate(**{name: status_expression()})


def label(slug: str) -> str:
    return Status(slug).label
