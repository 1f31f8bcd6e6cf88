"""Turning measurements into the table and `results.json`. Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CONTENDERS = ("naive", "streamscore", "echo", "ort")
TARGET_VS_NAIVE = 5.0
TARGET_VS_ECHO = 0.7


@dataclass
class ScenarioResult:
    """Everything measured for one scenario."""

    name: str
    records: int
    rows_per_request: int
    rows_per_s: dict[str, float]
    latency_ms: dict[str, float]  # streamscore: p50, p99
    extra: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> dict[str, float]:
        """streamscore's throughput over the naive loop's and over the echo ceiling's."""
        r = self.rows_per_s
        return {
            "vs_naive": _ratio(r["streamscore"], r["naive"]),
            "vs_echo": _ratio(r["streamscore"], r["echo"]),
        }

    def meets_targets(self) -> dict[str, bool]:
        """Whether streamscore is >= 5x naive and >= 0.7x echo."""
        ratios = self.ratios()
        return {
            "vs_naive": ratios["vs_naive"] >= TARGET_VS_NAIVE,
            "vs_echo": ratios["vs_echo"] >= TARGET_VS_ECHO,
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def results_document(results: list[ScenarioResult], machine: dict[str, Any]) -> dict[str, Any]:
    """The content of results.json."""
    return {
        "scenarios": [
            {
                "name": r.name,
                "rows_per_s": {c: round(r.rows_per_s[c], 1) for c in CONTENDERS},
                "latency_ms": {k: round(v, 2) for k, v in r.latency_ms.items()},
                "ratios": {k: round(v, 3) for k, v in r.ratios().items()},
                "targets_met": r.meets_targets(),
                "records": r.records,
                "rows_per_request": r.rows_per_request,
                **r.extra,
            }
            for r in results
        ],
        "machine": machine,
    }


def format_table(results: list[ScenarioResult]) -> str:
    """A fixed-width table: one line per scenario."""
    header = (
        f"{'scenario':<16} {'naive':>9} {'streamscore':>12} {'echo':>9} {'ort':>11}"
        f" {'ss/naive':>9} {'ss/echo':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        rows, ratios = r.rows_per_s, r.ratios()
        lines.append(
            f"{r.name:<16} {rows['naive']:>9,.0f} {rows['streamscore']:>12,.0f} {rows['echo']:>9,.0f}"
            f" {rows['ort']:>11,.0f} {ratios['vs_naive']:>8.1f}x {ratios['vs_echo']:>7.2f}x"
            f" {r.latency_ms['p50']:>7.1f} {r.latency_ms['p99']:>7.1f}"
        )
    lines.append("rows/s; time = first record consumed -> last output acknowledged; latency = streamscore")
    lines.append(f"targets: ss/naive >= {TARGET_VS_NAIVE:g}x, ss/echo >= {TARGET_VS_ECHO:g}x")
    return "\n".join(lines)
