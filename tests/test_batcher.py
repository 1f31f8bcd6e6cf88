"""MicroBatcher: every item comes out once, in order per key, in batches bounded by rows and delay."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from worker.batcher import Batch, MicroBatcher

KEYS = ["a", "b", "c"]


@dataclass(frozen=True)
class Add:
    key: str
    rows: int
    advance: float


@dataclass(frozen=True)
class Tick:
    advance: float


steps = st.lists(
    st.one_of(
        st.builds(Add, st.sampled_from(KEYS), st.integers(0, 12), st.floats(0, 2)),
        st.builds(Tick, st.floats(0, 3)),
    ),
    max_size=60,
)
limits = st.fixed_dictionaries({key: st.one_of(st.none(), st.integers(1, 10)) for key in KEYS})


def _cap(batcher: MicroBatcher[tuple[str, int, int]], limit: int | None) -> int:
    return batcher.max_rows if limit is None else limit


def _check_batch(batch: Batch[tuple[str, int, int]], cap: int) -> None:
    assert all(batch.key == key for key, _, _ in batch.items)
    assert batch.rows == sum(rows for _, _, rows in batch.items)
    assert batch.items, "no empty batches"
    assert batch.rows <= cap or len(batch.items) == 1


@given(st.integers(1, 16), st.floats(0.1, 5), limits, steps)
def test_every_item_comes_out_once_in_order_within_bounds(
    max_rows: int, max_delay: float, limit: dict[str, int | None], script: list[Add | Tick]
) -> None:
    """Any adds and ticks: each item leaves once, per-key order holds, batches respect the cap."""
    batcher: MicroBatcher[tuple[str, int, int]] = MicroBatcher(max_rows, max_delay)
    out: list[Batch[tuple[str, int, int]]] = []
    added: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    now = 0.0
    for seq, step in enumerate(script):
        now += step.advance
        if isinstance(step, Add):
            item = (step.key, seq, step.rows)
            added[step.key].append(item)
            cap = _cap(batcher, limit[step.key])
            closed = batcher.add(step.key, item, step.rows, now, limit=limit[step.key])
            for batch in closed:
                # a batch leaves on add only when full, or when the new item would overflow it
                full = batch.rows >= cap
                assert full or (item not in batch.items and batch.rows + step.rows > cap)
        else:
            closed = batcher.due(now)
            assert all(batch.opened + max_delay <= now for batch in closed)
            deadline = batcher.next_deadline()
            assert deadline is None or deadline > now
        out += closed
        assert sum(len(items) for items in added.values()) == len(batcher) + sum(len(b.items) for b in out)
    out += batcher.drain()

    assert len(batcher) == 0
    assert batcher.next_deadline() is None
    for batch in out:
        _check_batch(batch, _cap(batcher, limit[str(batch.key)]))
    emitted: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for batch in out:
        emitted[str(batch.key)] += batch.items
    assert dict(added) == dict(emitted)


def test_full_batch_closes_on_the_add_that_fills_it() -> None:
    """An add that brings a batch to max_rows returns that batch at once."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=4, max_delay=1.0)

    assert [] == batcher.add("k", "x", 3, now=0.0)
    (batch,) = batcher.add("k", "y", 1, now=0.0)

    assert (["x", "y"], 4) == (batch.items, batch.rows)
    assert len(batcher) == 0


def test_item_that_would_overflow_starts_a_new_batch() -> None:
    """An item that does not fit closes the open batch and opens the next one."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=4, max_delay=1.0)
    batcher.add("k", "x", 3, now=0.0)

    (closed,) = batcher.add("k", "y", 2, now=0.5)

    assert ["x"] == closed.items
    assert len(batcher) == 1
    assert 1.5 == batcher.next_deadline()


def test_oversized_item_is_a_batch_by_itself() -> None:
    """An item with more rows than the cap leaves alone, after the batch it could not join."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=4, max_delay=1.0)
    batcher.add("k", "small", 1, now=0.0)

    first, second = batcher.add("k", "big", 9, now=0.0)

    assert (["small"], ["big"]) == (first.items, second.items)
    assert len(batcher) == 0


def test_model_limit_caps_batches_below_max_rows() -> None:
    """With limit=1 (a fixed-batch model) every one-row item is its own batch."""
    batcher: MicroBatcher[int] = MicroBatcher(max_rows=256, max_delay=1.0)

    batches = [b for i in range(3) for b in batcher.add("k", i, 1, now=0.0, limit=1)]

    assert [[0], [1], [2]] == [b.items for b in batches]


def test_model_limit_above_max_rows_raises_the_cap() -> None:
    """A model tuned to 8 rows fills batches of 8 where the batcher's own cap is 4."""
    batcher: MicroBatcher[int] = MicroBatcher(max_rows=4, max_delay=1.0)

    batches = [b for i in range(8) for b in batcher.add("k", i, 1, now=0.0, limit=8)]

    assert [list(range(8))] == [b.items for b in batches]


def test_keys_batch_apart() -> None:
    """Items with different keys never share a batch."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=8, max_delay=1.0)
    batcher.add("a", "a1", 1, now=0.0)
    batcher.add("b", "b1", 1, now=0.0)
    batcher.add("a", "a2", 1, now=0.0)

    batches = {b.key: b.items for b in batcher.drain()}

    assert {"a": ["a1", "a2"], "b": ["b1"]} == batches


def test_due_returns_only_batches_past_their_delay() -> None:
    """due(now) closes batches opened at least max_delay ago and leaves younger ones."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=8, max_delay=1.0)
    batcher.add("old", "o", 1, now=0.0)
    batcher.add("young", "y", 1, now=0.6)
    batcher.add("old", "o2", 1, now=0.9)  # joining does not reset the batch's clock

    assert [] == batcher.due(now=0.99)
    (due,) = batcher.due(now=1.0)

    assert ("old", ["o", "o2"]) == (due.key, due.items)
    assert 1.6 == batcher.next_deadline()
    assert ["young"] == [b.key for b in batcher.due(now=1.6)]


def test_next_deadline_follows_the_oldest_open_batch() -> None:
    """next_deadline is the oldest open batch's start plus max_delay, or None when empty."""
    batcher: MicroBatcher[str] = MicroBatcher(max_rows=8, max_delay=0.5)
    assert batcher.next_deadline() is None

    batcher.add("b", "x", 1, now=2.0)
    batcher.add("a", "y", 1, now=1.0)

    assert 1.5 == batcher.next_deadline()
