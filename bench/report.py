"""Turning measurements into the table and `results.json`. Pure: no I/O.

Each scenario has its targets, as ratios: `vs_echo` (streamscore's rows/s over the echo ceiling's),
`vs_ort` (over onnxruntime alone), `vs_ceiling` (over the smaller of the two: whichever limits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CONTENDERS = ("naive", "streamscore", "echo", "ort")


@dataclass
class ScenarioResult:
    """Everything measured for one scenario."""

    name: str
    records: int
    rows_per_request: int
    rows_per_s: dict[str, float]
    latency_ms: dict[str, float]  # streamscore: p50, p99, p999
    targets: dict[str, float] = field(default_factory=dict)  # ratio name -> at least
    extra: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        """streamscore's throughput over the naive loop's, echo's, onnxruntime's, and the lower ceiling's."""
        r = self.rows_per_s
        return {
            "vs_naive": _ratio(r["streamscore"], r["naive"]),
            "vs_echo": _ratio(r["streamscore"], r["echo"]),
            "vs_ort": _ratio(r["streamscore"], r["ort"]),
            "vs_ceiling": _ratio(r["streamscore"], min(r["echo"], r["ort"])),
        }

    def meets_targets(self) -> dict[str, bool]:
        """Whether each of the scenario's targets holds."""
        ratios = self.ratios()
        return {name: ratios[name] >= at_least for name, at_least in self.targets.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def results_document(results: list[ScenarioResult], machine: dict[str, Any]) -> dict[str, Any]:
    """The content of results.json."""
    return {
        "scenarios": [
            {
                "name": r.name,
                "rows_per_s": {c: _round(r.rows_per_s[c], 1) for c in CONTENDERS},
                "latency_ms": {k: _round(v, 2) for k, v in r.latency_ms.items()},
                "ratios": {k: _round(v, 3) for k, v in r.ratios().items()},
                "targets": r.targets,
                "targets_met": r.meets_targets(),
                "records": r.records,
                "rows_per_request": r.rows_per_request,
                **r.extra,
            }
            for r in results
        ],
        "machine": machine,
    }


def _round(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def format_table(results: list[ScenarioResult]) -> str:
    """A fixed-width table: one line per scenario."""
    header = (
        f"{'scenario':<20} {'naive':>8} {'streamscore':>12} {'echo':>9} {'ort':>11}"
        f" {'ss/echo':>8} {'ss/ort':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7}  targets"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        rows, ratios = r.rows_per_s, r.ratios()
        met = ", ".join(
            f"{name} >= {at_least:g} {'ok' if ok else 'MISSED'}"
            for (name, at_least), ok in zip(r.targets.items(), r.meets_targets().values(), strict=True)
        )
        lines.append(
            f"{r.name:<20} {_num(rows['naive']):>8} {rows['streamscore']:>12,.0f} {rows['echo']:>9,.0f}"
            f" {rows['ort']:>11,.0f} {ratios['vs_echo']:>7.2f}x {ratios['vs_ort']:>6.2f}x"
            f" {r.latency_ms['p50']:>7.1f} {r.latency_ms['p99']:>7.1f}"
            f" {r.latency_ms.get('p999', math.nan):>7.1f}  {met}"
        )
    lines.append("rows/s, first record consumed -> last output acknowledged; latency: streamscore at half its peak")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"
