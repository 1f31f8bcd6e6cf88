"""What to do when a send fails, decided in one pure step (tenacity's way: decide, then act).

    after_send_failure(outcome, error, resends, elapsed_s, policy)
        -> Retry      send it again after `delay_s` (a transient error, within the retry budget)
        -> Reroute    a result refused for good is dead-lettered instead (stage "produce")
        -> Stop       a dead letter that cannot be written: the worker stops, its offset uncommitted
        -> Drop       a shadow result: best effort, nothing waits for it

The sender (worker/sender.py) carries the decision out.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.errors import FatalError, ResultRejectedError
from worker.outcomes import DeadLetter, Outcome, Result
from worker.retry import is_retriable

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
BACKOFF_JITTER_S = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` resends within `max_s` seconds, waiting longer after each failure."""

    attempts: int
    max_s: float
    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    jitter_s: float = BACKOFF_JITTER_S

    def delay(self, resend: int, unit: float) -> float:
        """Seconds to wait before resend number `resend` (from 1); `unit` is a random number in [0, 1).

        The first resend goes at once; then exponential backoff with jitter, capped.
        """
        if resend <= 1:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(resend - 2, 64) + self.jitter_s * unit)  # no overflow


@dataclass(frozen=True)
class Retry:
    """Send the same outcome again: resend number `resend`."""

    resend: int


@dataclass(frozen=True)
class Reroute:
    """Send `dead_letter` instead of the result that was refused."""

    dead_letter: DeadLetter


@dataclass(frozen=True)
class Stop:
    """The worker must stop without committing the outcome's offset."""

    error: FatalError


@dataclass(frozen=True)
class Drop:
    """Give up on a best-effort (shadow) outcome."""

    reason: str


SendFate = Retry | Reroute | Stop | Drop


def after_send_failure(
    outcome: Outcome, error: BaseException, resends: int, elapsed_s: float, policy: RetryPolicy
) -> SendFate:
    """The fate of `outcome` whose send failed with `error`, after `resends` resends in `elapsed_s`."""
    if outcome.shadow:
        return Drop(f"shadow result lost: {error!r}")
    if is_retriable(error) and resends < policy.attempts and elapsed_s < policy.max_s:
        return Retry(resends + 1)
    record = outcome.record
    if isinstance(outcome, Result):
        rejected = ResultRejectedError(f"the result of request {outcome.request_id!r} was refused: {error!r}")
        rejected.__cause__ = error
        return Reroute(DeadLetter(record, rejected, outcome.request_id, None, attempts=policy.attempts))
    fatal = FatalError(f"dead letter of {record.topic}[{record.partition}]@{record.offset} not written")
    fatal.__cause__ = error
    return Stop(fatal)
