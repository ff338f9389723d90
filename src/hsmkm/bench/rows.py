"""Benchmark rows and the table they print."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    group: str
    name: str
    value: float
    unit: str
    reference: str = ""
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate(fn: Callable[[], object], n: int) -> float:
    """Operations per second of ``fn`` over ``n`` calls."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def format_table(rows: list[Row]) -> str:
    lines = [f"{'row':<36} {'value':>14} {'unit':<10} {'ratio':>8}  reference"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}"
        lines.append(f"{r.group + '.' + r.name:<36} {r.value:>14.3f} {r.unit:<10} {ratio:>8}  {r.reference}")
    return "\n".join(lines)
