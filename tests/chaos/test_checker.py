"""The chaos checker accounts for every id sent, and finds commits ahead of their outputs (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.checker import CommitSample, Row, account, commits_ahead, render_table

GOOD = ["ok-1", "ok-2", "ok-3"]
POISON = ["bad-1"]


@pytest.mark.parametrize(
    ("results", "dead_letters", "expected"),
    [
        pytest.param(["ok-1", "ok-2", "ok-3"], ["bad-1"], {}, id="all-accounted"),
        pytest.param(["ok-1", "ok-3"], ["bad-1"], {"missing": 1}, id="a-good-id-missing"),
        pytest.param(GOOD, [], {"missing": 1}, id="a-poison-id-missing"),
        pytest.param(["ok-1", "ok-1", "ok-2", "ok-3"], ["bad-1"], {"duplicated": 1, "extra": 1}, id="a-result-twice"),
        pytest.param(GOOD * 3, ["bad-1"], {"duplicated": 3, "extra": 6}, id="every-result-thrice"),
        pytest.param(GOOD, ["bad-1", "bad-1"], {"duplicated": 1, "extra": 1}, id="a-dead-letter-twice"),
        pytest.param([*GOOD, "ok-9"], ["bad-1"], {"phantom": 1}, id="a-result-nobody-asked-for"),
        pytest.param(GOOD, ["bad-1", "bad-7"], {"phantom": 1}, id="a-dead-letter-nobody-sent"),
        pytest.param(GOOD, ["bad-1", "ok-2"], {"both": 1, "good_dead_lettered": 1}, id="good-in-both-topics"),
        pytest.param(["ok-1", "ok-3"], ["bad-1", "ok-2"], {"good_dead_lettered": 1}, id="good-dead-lettered"),
        pytest.param([*GOOD, "bad-1"], [], {"poison_scored": 1}, id="poison-scored"),
        pytest.param([*GOOD, "bad-1"], ["bad-1"], {"both": 1, "poison_scored": 1}, id="poison-in-both-topics"),
        pytest.param([], [], {"missing": 4}, id="nothing-read-back"),
    ],
)
def test_account_sorts_every_id_into_what_happened_to_it(
    results: list[str], dead_letters: list[str], expected: dict[str, int]
) -> None:
    """Each case reads back one kind of trouble; every count but the expected ones is zero."""
    row = account(GOOD, POISON, results, dead_letters)

    counted = ("missing", "duplicated", "extra", "phantom", "both", "good_dead_lettered", "poison_scored")
    assert {name: expected.get(name, 0) for name in counted} == {name: getattr(row, name) for name in counted}
    assert 4 == row.sent


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        pytest.param({}, "ok", id="clean"),
        pytest.param({"extra": 3, "bound": 3}, "ok", id="duplicates-within-bound"),
        pytest.param({"extra": 4, "bound": 3}, "FAIL duplicates 4>3", id="duplicates-over-bound"),
        pytest.param({"extra": 1}, "FAIL duplicates 1>0", id="one-duplicate-in-exactly-once"),
        pytest.param({"missing": 2, "phantom": 1}, "FAIL missing=2, phantom=1", id="missing-and-phantom"),
        pytest.param({"both": 1}, "FAIL both=1", id="both-topics"),
        pytest.param({"good_dead_lettered": 1}, "FAIL good_dead_lettered=1", id="good-dead-lettered"),
        pytest.param({"poison_scored": 1}, "FAIL poison_scored=1", id="poison-scored"),
        pytest.param({"commits_ahead": 2}, "FAIL commits_ahead=2", id="commit-ahead"),
    ],
)
def test_the_verdict_names_every_problem(changes: dict[str, Any], verdict: str) -> None:
    """A row passes only with no id lost, invented, misplaced or committed early, and duplicates within bound."""
    assert verdict == Row("s", "g", sent=10, **changes).verdict


def test_explain_shows_a_few_ids_of_each_problem() -> None:
    """The assertion message names the scenario, the verdict and the ids to look up."""
    row = account(GOOD, POISON, ["ok-1"], ["bad-1"], scenario="kill", guarantee="at-least-once")

    assert "kill [at-least-once]: FAIL missing=2 (missing: ok-2, ok-3)" == row.explain()


POSITIONS = {"a": (0, 0), "b": (0, 1), "c": (0, 2), "z": (1, 0)}


@pytest.mark.parametrize(
    ("written", "sample", "ahead"),
    [
        pytest.param({"a": 100, "b": 110}, CommitSample(120, 0, 2), False, id="outputs-before-the-commit"),
        pytest.param({"a": 100, "b": 130}, CommitSample(120, 0, 2), True, id="an-output-after-the-commit"),
        pytest.param({"a": 100}, CommitSample(120, 0, 2), True, id="an-output-never-written"),
        pytest.param({"a": 100}, CommitSample(120, 0, 1), False, id="committed-up-to-the-written-one"),
        pytest.param({}, CommitSample(120, 0, 0), False, id="nothing-committed-yet"),
        pytest.param({"a": 1, "b": 2, "c": 3}, CommitSample(120, 1, 1), True, id="other-partition-unwritten"),
        pytest.param({"a": 100, "b": 120}, CommitSample(120, 0, 2), False, id="written-in-the-same-millisecond"),
    ],
)
def test_commits_ahead_finds_an_offset_committed_before_its_output(
    written: dict[str, int], sample: CommitSample, ahead: bool
) -> None:
    """A commit sample is ahead when some record below its offset had no output created by the sample's time."""
    found = commits_ahead([sample], POSITIONS, written)

    assert ([sample] if ahead else []) == found


def test_the_table_has_a_row_per_scenario_and_the_tests_outcome() -> None:
    """One line per row under a header, with the test's outcome in the last column."""
    rows = [Row("kill-50%", "at-least-once", sent=100, extra=2, bound=5), Row("rolling", "exactly-once", sent=9)]

    table = render_table(rows, {("kill-50%", "at-least-once"): "passed"})

    lines = table.splitlines()
    assert 4 == len(lines)
    assert lines[0].startswith("scenario") and lines[0].endswith("test")
    assert lines[2].split()[-2:] == ["ok", "passed"]
    assert lines[3].split()[-2:] == ["ok", "?"]
