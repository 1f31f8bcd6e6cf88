"""`model tune`: the choice rule, the tune event in the manifest, the command on a tiny MLP (structure, not timings)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from artifacts.integrity import ArtifactError
from artifacts.manifest import TUNE_EVENT, Manifest, tuned_batch_rows
from artifacts.registry import Registry
from artifacts.runtime import CPU
from demo.models import make_fixed_batch_model, make_mlp
from registry.push import push_model
from registry.tune import (
    Choice,
    Point,
    choose,
    default_threads,
    make_options,
    tune_event,
    tune_model,
)
from schemas.errors import ConfigError
from streamscore import cli
from tests.factories import flip_byte

FAST = ["--seconds", "0.01", "--threads", "1"]


def point(batch: int, rows_per_s: float, p99_ms: float = 1.0, threads: int = 1) -> Point:
    """A measured point with the numbers a case needs (p50 is half the p99, runs do not matter)."""
    return Point(threads, batch, 100, rows_per_s, p99_ms / 2, p99_ms)


def counting_clock(step_ns: int = 1000) -> itertools.count[int]:
    """A clock that advances `step_ns` at every reading: runs take a known time, tests never wait."""
    return itertools.count(0, step_ns)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry holding mlp version 1 (pushed: its files' sha256 in the manifest)."""
    push_model(Registry.at(tmp_path / "registry"), make_mlp(tmp_path / "mlp.onnx"), name="mlp", version="1")
    return tmp_path / "registry"


# ---------------------------------------------------------------------------------------------
# the choice rule


CURVE = [point(1, 100), point(8, 700), point(32, 2000), point(64, 2900), point(128, 3000), point(256, 2950)]


@pytest.mark.parametrize(
    ("points", "tolerance", "budget_ms", "chosen", "best"),
    [
        (CURVE, 0.05, None, 64, 128),  # 2900 >= 0.95 * 3000: the knee, not the peak
        (CURVE, 0.0, None, 128, 128),  # no tolerance: the peak itself
        (CURVE, 0.5, None, 32, 128),  # 2000 >= 0.5 * 3000
        ([point(1, 100), point(8, 100)], 0.05, None, 1, 1),  # a tie goes to the smaller batch
        ([point(64, 3000, p99_ms=0.5), point(128, 5000, p99_ms=2.0)], 0.05, 1.0, 64, 64),  # 128 is over budget
        ([point(64, 3000, p99_ms=0.5), point(128, 5000, p99_ms=1.0)], 0.05, 1.0, 128, 128),  # p99 at the budget fits
        ([point(256, 9000)], 0.05, None, 256, 256),  # a fixed-batch model: its one batch
    ],
    ids=["knee", "peak", "wide", "tie", "budget", "at-budget", "one"],
)
def test_choose_takes_the_smallest_batch_near_the_best_within_budget(
    points: list[Point], tolerance: float, budget_ms: float | None, chosen: int, best: int
) -> None:
    """Of the batches whose p99 fits the budget, the smallest within `tolerance` of the best rows/s."""
    choice = choose(points, tolerance, budget_ms)
    assert choice is not None
    assert (chosen, best) == (choice.chosen.batch, choice.best.batch)


def test_choose_gives_none_when_no_batch_fits_the_budget() -> None:
    """A budget below every p99 leaves nothing to choose."""
    assert None is choose([point(1, 100, p99_ms=0.2), point(8, 700, p99_ms=0.3)], 0.05, 0.1)


@pytest.mark.parametrize(("cpus", "threads"), [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])])
def test_default_threads_are_powers_of_two_and_the_cpu_count(cpus: int, threads: list[int]) -> None:
    """A small set from 1 to the CPU count."""
    assert threads == default_threads(cpus)


def test_options_default_batches_end_at_the_cap_and_bad_values_are_refused() -> None:
    """The ladder stops at --max-batch and includes it; --seconds, --tolerance and sizes are checked."""
    assert (1, 8, 32, 64, 100) == make_options(max_batch=100, threads=[1]).batches
    assert (1, 8, 32, 64, 128, 256, 512) == make_options(threads=[1]).batches
    for bad in ({"seconds": 0}, {"tolerance": 1.0}, {"max_latency_ms": 0}, {"batches": [0, 8]}, {"threads": [0]}):
        with pytest.raises(ConfigError):
            make_options(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the manifest: written, read back, verified at load


def test_the_tune_event_round_trips_and_the_version_still_verifies(root: Path) -> None:
    """tune_model appends a tune event; the manifest reads it back, and every file still matches its sha256."""
    registry = Registry.at(root)
    before = registry.manifest("mlp", "1")

    result = tune_model(registry, "mlp", "1", make_options([1, 8], threads=[1, 2], seconds=0.01))

    after = registry.read_version("mlp", "1").manifest  # raises if a file no longer matches the manifest
    assert result.recorded
    assert before.files == after.files and before.sha256 == after.sha256
    [event] = after.history
    assert TUNE_EVENT == event["event"] and CPU[0] == event["provider"]
    assert {"1", "2"} == set(event["max_batch_rows"])
    assert [(t, b) for t in (1, 2) for b in (1, 8)] == [(p["threads"], p["batch"]) for p in event["points"]]
    for threads in (1, 2):
        assert event["max_batch_rows"][str(threads)] == after.tuned_batch_rows(threads, CPU[0])
    assert after == Manifest.from_json(after.to_json())


def test_a_tampered_artifact_is_refused_before_anything_is_measured(root: Path) -> None:
    """Tuning reads the version as workers do: a flipped byte stops it, and nothing is recorded."""
    flip_byte(root, "1")
    with pytest.raises(ArtifactError, match="corrupted or replaced"):
        tune_model(Registry.at(root), "mlp", "1", make_options([1], threads=[1], seconds=0.01))
    assert [] == Registry.at(root).manifest("mlp", "1").history


@pytest.mark.parametrize(
    ("threads", "provider", "expected"),
    [
        (1, CPU[0], 64),
        (2, CPU[0], 128),
        (3, CPU[0], 128),  # 2 and 4 are as near: the lower
        (16, CPU[0], 256),  # past the last measured: the nearest
        (1, "CUDAExecutionProvider", None),  # measured on the CPU: says nothing for CUDA
    ],
)
def test_tuned_batch_rows_takes_the_nearest_thread_count_on_the_same_provider(
    threads: int, provider: str, expected: int | None
) -> None:
    """The latest tune event on the worker's provider, at its thread count or the nearest measured."""
    history = [
        {"event": TUNE_EVENT, "provider": CPU[0], "max_batch_rows": {"1": 8}},  # superseded
        {"event": "optimize", "result": "refused"},
        {"event": TUNE_EVENT, "provider": CPU[0], "max_batch_rows": {"1": 64, "2": 128, "4": 256}},
    ]
    assert expected == tuned_batch_rows(history, threads, provider)


@pytest.mark.parametrize("chosen", [None, "64", {"1": 0}, {"1": "64"}, {"one": 64}, {"1": True}])
def test_a_tune_event_edited_into_nonsense_counts_as_none(chosen: object) -> None:
    """A hand-edited event never gives a worker a batch size that is not a positive whole number."""
    assert None is tuned_batch_rows([{"event": TUNE_EVENT, "provider": CPU[0], "max_batch_rows": chosen}], 1, CPU[0])


def test_tune_event_records_only_the_thread_counts_with_a_choice() -> None:
    """A thread count where no batch fits the budget has no entry; the points are all kept."""
    points = [point(8, 700, threads=1), point(8, 900, p99_ms=5.0, threads=2)]
    choices: dict[int, Choice | None] = {1: choose(points[:1], 0.05), 2: None}
    event = tune_event(points, choices, make_options([8], threads=[1, 2]))
    assert {"1": 8} == event["max_batch_rows"]
    assert 2 == len(event["points"])


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_prints_a_row_per_point_marks_the_choice_and_records_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`model tune` on the MLP: a table row per batch, one marked, a progress line per point on stderr."""
    code = cli.main(["model", "--model-root", str(root), "tune", "mlp", "1", "--batches", "1,8,32", *FAST])

    out, err = capsys.readouterr()
    assert 0 == code
    rows = [line.split() for line in out.splitlines() if line.startswith(" ") and line.split()[0].isdigit()]
    assert [["1", "1"], ["1", "8"], ["1", "32"]] == [row[:2] for row in rows]
    assert 1 == sum(row[-1] == "*" for row in rows)
    assert "max_batch_rows" in out and "recorded in the manifest of mlp version 1" in out
    assert 3 == err.count("tune mlp 1: 1 thread, batch")
    tuned = Registry.at(root).manifest("mlp", "1").tuned_batch_rows(1, CPU[0])
    assert [row[1] for row in rows if row[-1] == "*"] == [str(tuned)]


def test_cli_dry_run_records_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run measures and prints, and leaves the manifest as it was."""
    assert 0 == cli.main(["model", "--model-root", str(root), "tune", "mlp", "1", "--batches", "1", "--dry-run", *FAST])
    assert "recorded" not in capsys.readouterr().out
    assert [] == Registry.at(root).manifest("mlp", "1").history


def test_cli_with_an_impossible_latency_budget_exits_1_and_records_nothing(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No batch runs within 1 ns: the table is printed, the reason said, the manifest untouched."""
    argv = ["model", "--model-root", str(root), "tune", "mlp", "1", "--batches", "1,8", "--max-latency-ms", "1e-6"]
    assert 1 == cli.main([*argv, *FAST])
    assert "1 thread: no batch runs within --max-latency-ms 1e-06 at p99; raise the budget" in capsys.readouterr().out
    assert [] == Registry.at(root).manifest("mlp", "1").history


def test_cli_names_the_pushed_versions_when_the_version_is_missing(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version that was never pushed: what is missing, what exists, what to do."""
    assert 2 == cli.main(["model", "--model-root", str(root), "tune", "mlp", "7", *FAST])
    err = capsys.readouterr().err
    assert "model mlp has no pushed version 7 in the registry (pushed: 1)" in err
    assert "streamscore model push" in err


def test_a_fixed_batch_model_is_measured_at_its_own_batch_only(tmp_path: Path) -> None:
    """The batch-of-one model takes exactly one row: every point is batch 1, and 1 is chosen."""
    registry = Registry.at(tmp_path / "registry")
    push_model(registry, make_fixed_batch_model(tmp_path / "fixed.onnx"), name="fixed", version="1")

    result = tune_model(registry, "fixed", "1", make_options([8, 64], threads=[1], seconds=0.01))

    assert [1] == [p.batch for p in result.points]
    assert 1 == registry.manifest("fixed", "1").tuned_batch_rows(1, CPU[0])


def test_sample_rows_fewer_than_a_batch_are_repeated_to_fill_it(root: Path, tmp_path: Path) -> None:
    """A 3-row sample still measures batches of 32 rows (times come from the injected clock)."""
    sample = tmp_path / "rows.npy"
    np.save(sample, np.random.default_rng(0).random((3, 8), dtype=np.float32))
    options = make_options([1, 32], threads=[1], seconds=0.001, sample=sample)

    result = tune_model(Registry.at(root), "mlp", "1", options, clock=counting_clock().__next__)

    assert [1, 32] == [p.batch for p in result.points]
    assert [1_000_000, 32_000_000] == [round(p.rows_per_s) for p in result.points]  # a batch per 1 us run
