"""OffsetTracker: commit only past offsets whose every predecessor is finished."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.offsets import OffsetTracker

P = "topic-0"


@st.composite
def taken_then_finished(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Ascending offsets with gaps, and the same offsets in a random finishing order."""
    start = draw(st.integers(0, 1000))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
    offsets = [start + sum(gaps[:i]) for i in range(len(gaps))]
    return offsets, draw(st.permutations(offsets))


@given(taken_then_finished())
def test_committable_never_passes_an_unfinished_offset(plan: tuple[list[int], list[int]]) -> None:
    """At every step the committable offset is past finished offsets only; at the end it is last+1."""
    offsets, finish_order = plan
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.take(P, offset)
    finished: set[int] = set()

    for count, offset in enumerate(finish_order, start=1):
        tracker.finish(P, offset)
        finished.add(offset)
        ready = tracker.committable().get(P)
        if ready is not None:
            assert all(o in finished for o in offsets if o < ready)
            assert ready - 1 in finished
        unfinished = [o for o in offsets if o not in finished]
        if unfinished:
            assert ready is None or ready <= unfinished[0]
        assert len(offsets) - count == tracker.in_flight()

    assert {P: offsets[-1] + 1} == tracker.committable()


@given(taken_then_finished())
def test_committable_is_the_longest_finished_prefix(plan: tuple[list[int], list[int]]) -> None:
    """The committable offset is one past the longest run of finished offsets from the first taken."""
    offsets, finish_order = plan
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.take(P, offset)
    finished: set[int] = set()

    for offset in finish_order:
        tracker.finish(P, offset)
        finished.add(offset)
        prefix = 0
        while prefix < len(offsets) and offsets[prefix] in finished:
            prefix += 1
        expected = {P: offsets[prefix - 1] + 1} if prefix else {}
        assert expected == tracker.committable()


def test_mark_committed_suppresses_repeats_until_the_run_grows() -> None:
    """After a commit is marked, the same offset is not offered again; a longer run is."""
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.take(P, offset)
    tracker.finish(P, 10)
    assert {P: 11} == tracker.committable()

    tracker.mark_committed({P: 11})
    assert {} == tracker.committable()

    tracker.finish(P, 12)  # behind the unfinished 11: nothing new
    assert {} == tracker.committable()
    tracker.finish(P, 11)
    assert {P: 13} == tracker.committable()


def test_partitions_are_tracked_apart() -> None:
    """A slow offset in one partition does not hold back another partition."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.take("a", 0)
    tracker.take("b", 5)
    tracker.take("b", 6)

    tracker.finish("b", 5)

    assert {"b": 6} == tracker.committable()
    assert 1 == tracker.in_flight(["a"])
    assert 2 == tracker.in_flight()
    assert 0 == tracker.in_flight(["unknown"])


def test_forget_drops_a_partition_and_ignores_late_finishes() -> None:
    """After forget, the partition is gone and finishing its offsets changes nothing."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.take("a", 0)
    tracker.take("b", 0)

    tracker.forget(["a"])
    tracker.finish("a", 0)

    assert ["b"] == tracker.partitions()
    assert {} == tracker.committable()
    assert 1 == tracker.in_flight()


def test_forgotten_partition_starts_fresh_when_taken_again() -> None:
    """A partition assigned again after forget accepts offsets from any position."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.take(P, 100)
    tracker.forget([P])

    tracker.take(P, 50)
    tracker.finish(P, 50)

    assert {P: 51} == tracker.committable()


@pytest.mark.parametrize(("taken", "again"), [((5, 7), 6), ((5,), 5), ((5,), 4)])
def test_taking_out_of_order_raises(taken: tuple[int, ...], again: int) -> None:
    """Taking an offset at or below the last taken one raises ValueError."""
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in taken:
        tracker.take(P, offset)

    with pytest.raises(ValueError, match="taken again, or out of order"):
        tracker.take(P, again)


def test_taking_below_a_finished_run_raises() -> None:
    """Once offsets are finished and gone from pending, re-taking one of them still raises."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.take(P, 3)
    tracker.finish(P, 3)

    with pytest.raises(ValueError, match="out of order"):
        tracker.take(P, 3)
    tracker.take(P, 4)
    assert 1 == tracker.in_flight()
