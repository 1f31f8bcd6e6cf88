"""Which partitions the consumer fetches: backpressure, a commit's hold, a retry not yet due; decided in one place."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from worker.pauses import wanted

IN0, IN1, RETRY0 = TopicPartition("in", 0), TopicPartition("in", 1), TopicPartition("in-retry-1000", 0)
ASSIGNED = {IN0, IN1, RETRY0}
NOW_MS = 1_000_000


@pytest.mark.parametrize(
    ("backpressure", "held", "waiting", "paused"),
    [
        pytest.param(False, set(), {}, set(), id="nothing-fetches-everything"),
        pytest.param(True, set(), {}, ASSIGNED, id="backpressure-pauses-all"),
        pytest.param(False, {IN1}, {}, {IN1}, id="a-commit-holds-one"),
        pytest.param(False, set(), {RETRY0: NOW_MS + 1}, {RETRY0}, id="a-retry-not-due"),
        pytest.param(False, set(), {RETRY0: NOW_MS}, set(), id="a-retry-due-now"),
        pytest.param(False, {TopicPartition("in", 7)}, {}, set(), id="not-assigned-not-paused"),
        pytest.param(False, {IN0}, {RETRY0: NOW_MS + 1}, {IN0, RETRY0}, id="both"),
    ],
)
def test_the_partitions_to_pause(
    backpressure: bool,
    held: set[TopicPartition],
    waiting: dict[TopicPartition, int],
    paused: set[TopicPartition],
) -> None:
    assert paused == wanted(ASSIGNED, backpressure, held, waiting, NOW_MS)
