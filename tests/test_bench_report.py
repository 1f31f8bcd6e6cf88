"""The benchmark's report: ratios, targets per scenario, and the stage profile's arithmetic."""

from __future__ import annotations

import math

import pytest

from bench.report import ScenarioResult, format_table, results_document
from bench.stages import StageClock


def result(streamscore: float, echo: float, ort: float, targets: dict[str, float]) -> ScenarioResult:
    rates = {"naive": math.nan, "streamscore": streamscore, "echo": echo, "ort": ort}
    return ScenarioResult("s", 10, 1, rates, {"p50": 1.0, "p99": 2.0, "p999": 3.0}, targets)


@pytest.mark.parametrize(
    ("rates", "targets", "met"),
    [
        pytest.param((85, 100, 1000), {"vs_echo": 0.85}, {"vs_echo": True}, id="at-the-target"),
        pytest.param((84, 100, 1000), {"vs_echo": 0.85}, {"vs_echo": False}, id="just-under"),
        pytest.param((80, 1000, 100), {"vs_ceiling": 0.8}, {"vs_ceiling": True}, id="ceiling-is-ort"),
        pytest.param((80, 100, 1000), {"vs_ceiling": 0.8}, {"vs_ceiling": True}, id="ceiling-is-echo"),
        pytest.param((79, 1000, 100), {"vs_ceiling": 0.8}, {"vs_ceiling": False}, id="under-the-lower-ceiling"),
        pytest.param((9, 100, 10), {"vs_ort": 0.9}, {"vs_ort": True}, id="vs-ort"),
    ],
)
def test_targets_are_ratios_against_the_scenarios_own_baselines(
    rates: tuple[float, float, float], targets: dict[str, float], met: dict[str, bool]
) -> None:
    assert met == result(*rates, targets).meets_targets()


def test_results_json_keeps_its_schema_and_writes_a_missing_naive_as_null() -> None:
    """rows_per_s {naive, streamscore, echo, ort} and latency_ms stay; a scenario without naive has null."""
    [scenario] = results_document([result(80, 100, 1000, {"vs_echo": 0.85})], {})["scenarios"]

    assert {"naive": None, "streamscore": 80, "echo": 100, "ort": 1000} == scenario["rows_per_s"]
    assert {"p50": 1.0, "p99": 2.0, "p999": 3.0} == scenario["latency_ms"]
    assert {"vs_echo": False} == scenario["targets_met"]
    assert "vs_echo >= 0.85 MISSED" in format_table([result(80, 100, 1000, {"vs_echo": 0.85})])


def test_the_stage_profile_is_per_record_and_a_share_of_the_span() -> None:
    """2 ms of decode over 1,000 records in a 10 ms span: 2 us a record, 20 %; the loop's remainder is the rest."""
    clock = StageClock()
    clock.seconds["decode"] = 0.002
    clock.seconds["infer"] = 0.004  # the model thread's: not taken from the loop's remainder

    profile = clock.profile(records=1000, span_s=0.010)

    assert {"us_per_record": 2.0, "share": 0.2} == profile["decode"]
    assert {"us_per_record": 4.0, "share": 0.4} == profile["infer"]
    assert {"us_per_record": 8.0, "share": 0.8} == profile["loop other"]


def test_the_clock_times_the_stage_functions_and_puts_them_back() -> None:
    """Installed, a call to the worker's decode is timed under "decode"; uninstalled, the original is back."""
    import worker.admit as admit
    from schemas.codec import Limits
    from schemas.records import InputRecord

    original = admit.decode
    clock = StageClock()
    with clock.installed():
        assert admit.decode is not original
        admit.decode(
            InputRecord("t", 0, 0, b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'),
            Limits(),
        )

    assert admit.decode is original
    assert clock.seconds["decode"] > 0
