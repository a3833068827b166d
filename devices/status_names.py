"""The names the pages give the statuses, chosen per organization (Organization.status_names).

Only labels change: the `data-status` slugs, URLs, API values and the status rule stay the same
(docs/design.md, Statuses). "balena" uses balenaCloud's current names (its v7 `overall_status`),
where both partial states read "Reduced Functionality" (the footnote markers still tell them apart).

The dashboard views run inside `activate(organizations)` (devices.views.dashboard_view): a context
variable then holds the viewer's naming and each organization's, so a badge finds its row's naming
with a dictionary lookup, never a query, and templates need no extra argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from devices.status import Status
from fleets.models import Organization, StatusNames

DEFAULT = StatusNames.FLEETSTATUS.value

LABELS: dict[str, dict[str, str]] = {
    StatusNames.FLEETSTATUS: {s.value: s.label for s in Status},
    StatusNames.BALENA: {
        Status.ONLINE: "Operational",
        Status.ONLINE_VPN_ONLY: "Reduced Functionality",
        Status.ONLINE_HEARTBEAT_ONLY: "Reduced Functionality",
        Status.OFFLINE: "Disconnected",
        Status.CONFIGURING: "Configuring",
        Status.UPDATING: "Updating",
        Status.POST_PROVISIONING: "Post Provisioning",
        Status.INACTIVE: "Inactive",
        Status.FROZEN: "Frozen",
    },
}


@dataclass(frozen=True)
class Naming:
    """The viewer's naming (for what belongs to no one organization) and each organization's."""

    viewer: str = DEFAULT
    by_organization: dict[int, str] = field(default_factory=dict)


_current: ContextVar[Naming | None] = ContextVar("status_naming", default=None)
_OUTSIDE = Naming()  # outside a dashboard view (the admin, commands): the default names


def _naming() -> Naming:
    return _current.get() or _OUTSIDE


def label(slug: str, naming: str | None = None) -> str:
    """The label of a status slug in `naming` (the viewer's when None); an unknown slug as is."""
    names = LABELS.get(naming or _naming().viewer) or LABELS[DEFAULT]
    return names.get(slug, slug)


def naming_for(organization_id: int | None) -> str:
    """The naming of one organization among the viewer's (the viewer's for any other)."""
    naming = _naming()
    return naming.by_organization.get(organization_id, naming.viewer)


def naming_of(device) -> str:
    """The naming of a device's organization; outside a page (the admin) the device is not even read."""
    naming = _naming()
    if not naming.by_organization:
        return naming.viewer
    return naming.by_organization.get(device.organization_id, naming.viewer)


def viewer_naming(organizations: list[Organization]) -> str:
    """One naming for what belongs to no single organization: the first organization's (by name)."""
    return organizations[0].status_names if organizations else DEFAULT


@contextmanager
def activate(organizations: Iterable[Organization]) -> Iterator[None]:
    """Labels rendered within follow the organizations' namings."""
    organizations = list(organizations)
    token = _current.set(Naming(viewer_naming(organizations), {o.pk: o.status_names for o in organizations}))
    try:
        yield
    finally:
        _current.reset(token)


def focus(organization_id: int) -> None:
    """A page about one organization's fleet or device: its naming becomes the page's.

    Call within activate(), which restores the previous naming at its end."""
    naming = _naming()
    _current.set(Naming(naming_for(organization_id), naming.by_organization))
