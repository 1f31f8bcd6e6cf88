"""Showing a `model compare` report: a table for a terminal, or JSON (`--json`)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.compare import OutputReport, Report


def render_json(report: Report, model: str, results_topic: str, shadow_topic: str) -> str:
    """The report as a JSON object, indented."""
    body = {"model": model, "results_topic": results_topic, "shadow_topic": shadow_topic, **report_dict(report)}
    return json.dumps(body, indent=2)


def report_dict(report: Report) -> dict[str, Any]:
    """The report as plain data."""
    return {
        "atol": report.atol,
        "pairs": report.pairs,
        "disagreeing": report.disagreeing,
        "disagreement": report.disagreement,
        "unpaired": {"current": report.unpaired_current, "shadow": report.unpaired_shadow},
        "unreadable": {"current": report.unreadable_current, "shadow": report.unreadable_shadow},
        "versions": {"current": list(report.current_versions), "shadow": list(report.shadow_versions)},
        "outputs": {o.name: output_dict(o) for o in report.outputs},
    }


def output_dict(output: OutputReport) -> dict[str, Any]:
    """One output's comparison as plain data (its fields but the name, and the label agreement)."""
    body = dataclasses.asdict(output)
    del body["name"]
    return {**body, "label_agreement": output.label_agreement}


def render_table(report: Report, model: str, results_topic: str, shadow_topic: str) -> str:
    """The report as text for a terminal."""
    lines = [
        f"model {model}: {report.pairs} pairs compared ({results_topic} against {shadow_topic})",
        f"unpaired: {report.unpaired_current} current only, {report.unpaired_shadow} shadow only" + _unreadable(report),
        f"versions: current {', '.join(report.current_versions) or '-'}; "
        f"shadow {', '.join(report.shadow_versions) or '-'}",
        f"disagreement: {report.disagreeing} of {report.pairs} requests ({_percent(report.disagreement)}) "
        f"beyond atol {report.atol:g} or with a different label",
        "",
        f"{'output':<20} {'kind':<13} {'disagree':>9} {'max abs':>10} {'mean abs':>10} {'p99 abs':>10}  labels agree",
    ]
    for o in report.outputs:
        agree = "-" if o.label_agreement is None else f"{_percent(o.label_agreement)} ({o.labels_agreeing}/{o.labels})"
        mismatched = f"  ({o.mismatched} mismatched)" if o.mismatched else ""
        lines.append(
            f"{o.name:<20} {o.kind:<13} {_percent(o.disagreeing / o.requests):>9} {_number(o.max_abs_diff):>10} "
            f"{_number(o.mean_abs_diff):>10} {_number(o.p99_abs_diff):>10}  {agree}{mismatched}"
        )
    return "\n".join(lines)


def _unreadable(report: Report) -> str:
    if not (report.unreadable_current or report.unreadable_shadow):
        return ""
    return f"; not V2 responses: {report.unreadable_current} current, {report.unreadable_shadow} shadow"


def _percent(share: float) -> str:
    return f"{100 * share:.2f} %"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
