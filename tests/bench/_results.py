"""The benchmark results file: ``.bench/results.json``, a list of rows every issue adds to."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(".bench/results.json")


@dataclass(slots=True)
class Row:
    """One figure; ``ratio`` = value / baseline, both measured in the same run."""

    name: str
    backend: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = field(default=None, init=False)  # ``target`` reached (None: no target)

    def __post_init__(self) -> None:
        self.met = meets(self, self.target) if self.target else None

    @classmethod
    def compared(
        cls, name: str, backend: str, value: float, unit: str, baseline: float | None, **kw: str
    ) -> Row:
        ratio = round(value / baseline, 3) if baseline else None
        return cls(
            name, backend, round(value, 3), unit, baseline and round(baseline, 3), ratio, **kw
        )


_RATIO = re.compile(r">=\s*([\d.]+)x raw")
_VALUE = re.compile(r">=\s*([\d,.]+)\s")


def meets(row: Row, target: str) -> bool | None:
    """Whether ``row`` reaches a target written ``>= 0.85x raw`` or ``>= 100,000 unit``."""
    if match := _RATIO.search(target):
        return None if row.ratio is None else row.ratio >= float(match[1])
    if match := _VALUE.search(target + " "):
        return row.value >= float(match[1].replace(",", ""))
    return None


def write(rows: list[Row]) -> None:
    """Replace this run's rows by name/backend, keeping rows other benchmarks wrote."""
    RESULTS.parent.mkdir(exist_ok=True)
    old: list[dict[str, object]] = []
    if RESULTS.exists():
        old = json.loads(RESULTS.read_text())
    fresh = {(r.name, r.backend) for r in rows}
    kept = [r for r in old if (r.get("name"), r.get("backend")) not in fresh]
    RESULTS.write_text(json.dumps(kept + [asdict(r) for r in rows], indent=2) + "\n")


def show(rows: list[Row]) -> None:
    print(
        f"{'name':28} {'backend':8} {'value':>14} {'unit':10} {'baseline':>14} {'ratio':>7}  target"
    )
    for r in rows:
        base = "" if r.baseline is None else f"{r.baseline:,.1f}"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        print(
            f"{r.name:28} {r.backend:8} {r.value:>14,.1f} {r.unit:10} {base:>14} {ratio:>7}  "
            f"{r.target or ''}{'' if r.met is None else ('  met' if r.met else '  MISSED')}"
        )
    missed = [f"{r.name} [{r.backend}]" for r in rows if r.met is False]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
