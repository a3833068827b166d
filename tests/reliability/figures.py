"""Figures the reliability tests report (requests fuzzed, faults survived, devices checked...).

Tests add to them; tests/reliability/conftest.py prints them at the end of the run, so CI's log
carries the numbers the issue asks for.
"""

from __future__ import annotations

from collections import defaultdict

FIGURES: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


def add(section: str, **counts: int) -> None:
    for name, value in counts.items():
        FIGURES[section][name] += value


def lines() -> list[str]:
    return [
        f"{section}: " + ", ".join(f"{name}={value}" for name, value in counts.items())
        for section, counts in FIGURES.items()
    ]
