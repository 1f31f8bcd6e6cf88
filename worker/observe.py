"""Hooks on a record's way through a worker. The base class counts, for the progress log lines.

A benchmark or a metrics exporter subclasses `Observer`; the worker calls it at each step.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from schemas.records import Record
from worker.batcher import Batch
from worker.outcomes import Item, Outcome, Result


class Observer:
    """Counts results, dead letters, rows scored and shadow results."""

    def __init__(self) -> None:
        self.counts = {"results": 0, "dead_letters": 0, "rows": 0, "shadow": 0, "retried": 0}

    def consumed(self, record: Record) -> None:
        """A record was fetched."""

    def started(self, batch: Batch[Item]) -> None:
        """A batch closed and goes to the model thread (where it may wait behind the batch being scored)."""

    def scored(self, batch: Batch[Item]) -> None:
        """A batch went through the model (`batch.ran_s`: how long its run took, without the wait)."""
        self.counts["rows"] += batch.rows

    def outgoing(self, outcome: Outcome) -> Outcome:
        """A batch's outcome is about to be sent (results are made only there): what to send instead.
        The base class sends it as it is; a tracer puts its span's context in a result's headers."""
        return outcome

    def finished(self, outcome: Outcome) -> None:
        """An outcome was acknowledged by the broker."""
        if outcome.shadow:
            self.counts["shadow"] += 1
        elif isinstance(outcome, Result):
            self.counts["results"] += 1
        elif outcome.hop is not None:
            self.counts["retried"] += 1
        else:
            self.counts["dead_letters"] += 1

    def released(self, record: Record) -> None:
        """A share group's record was released, its failure may pass: it has no outcome here."""
        self.counts["released"] = self.counts.get("released", 0) + 1

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """A rebalance finished; these partitions are this process's now."""

    def summary(self) -> dict[str, Any]:
        """The counts, as log keys."""
        return dict(self.counts)
