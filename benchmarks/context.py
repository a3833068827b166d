"""What every benchmark runner needs: the plan, the options, what the seed made, and cleanup."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import seed

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Context:
    plan: seed.Plan
    args: argparse.Namespace
    log: Callable[[str], None]
    meta: dict[str, Any]
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def load(cls, *, plan: seed.Plan, args: argparse.Namespace, log: Callable[[str], None]) -> Context:
        RESULTS_DIR.mkdir(exist_ok=True)
        return cls(plan=plan, args=args, log=log, meta=seed.get_meta("seed", {}))

    @property
    def quick(self) -> bool:
        return self.plan is seed.QUICK

    @property
    def page_runs(self) -> int:
        return 7 if self.quick else 15

    @property
    def load_seconds(self) -> int:
        if self.args.load_seconds:
            return self.args.load_seconds
        return 10 if self.quick else 60

    @property
    def load_runs(self) -> int:
        return 1 if self.quick else 3

    def close(self) -> None:
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                self.log(f"cleanup failed: {exc}")
