"""The Jinja2 environment of templates/jinja2/ (the TEMPLATES entry named "jinja2" in settings).

It renders the pages' hot fragments and the small pieces they share with the Django templates
(devices/templatetags/fleetstatus.py), with the same filters as those templates.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment

from devices.templatetags import fleetstatus as tags


def environment(**options: Any) -> Environment:
    env = Environment(**options, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(
        status_label=tags.status_label,
        footnote_id=tags.footnote_id,
        footnote_marker=tags.footnote_marker,
        duration=tags.duration,
        percent=tags.percent,
        megabytes=tags.megabytes,
        utc_iso=tags.utc_iso,
        utc_text=tags.utc_text,
        utc_clock=tags.utc_clock,
        ago=tags.ago,
        words=str.split,
        # The cached Python side of the macros svg_icon and status_badge of _components.html.
        icon=tags.status_icon,
        badge=tags.badge,
    )
    return env
