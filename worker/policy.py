"""What to do when a send fails, decided in one pure step (tenacity's way: decide, then act).

    after_send_failure(outcome, error, resends, elapsed_s, policy)
        -> Retry      the broker's trouble (unreachable, timed out, not enough replicas, no leader):
                      send it again after a backoff, for as long as it takes; the worker pauses
                      fetching meanwhile and commits nothing past the record
        -> Reroute    a result refused for good because of what it is (larger than the topic
                      allows, corrupt): its request is dead-lettered instead (stage "produce");
                      a record a retry topic refuses for good goes to the dead-letter topic
        -> Stop       an ACL is missing (NotAuthorizedError, exit 2), or a dead letter is refused
                      for good (FatalError, exit 1): the worker stops, the offset uncommitted
        -> Drop       a shadow result: best effort, nothing waits for it
        -> Abandon    exactly once: a send inside a transaction failed, so the transaction cannot
                      commit; the outcome is lost, the partition's transaction is aborted and its
                      records read again (worker/committer.py)

A record is never dead-lettered for the broker's failure, only for its own. The sender
(worker/sender.py) carries the decision out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from schemas import headers as h
from schemas.errors import FatalError, NotAuthorizedError, ResultRejectedError
from worker.outcomes import DeadLetter, Outcome, Result

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
BACKOFF_JITTER_S = 0.5

#: The broker refuses the record itself, and would refuse it again: no retry can help.
REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException)
#: The principal lacks an ACL: no retry can help, and no other record would fare better.
NOT_AUTHORIZED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Resends wait longer after each failure, up to a cap, with jitter; they never give up."""

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


@dataclass(frozen=True)
class Abandon:
    """Exactly once: the outcome is lost with its transaction; the partition is read again."""

    reason: str


SendFate = Retry | Reroute | Stop | Drop | Abandon


def after_send_failure(
    outcome: Outcome,
    error: BaseException,
    resends: int,
    topic: str,
    *,
    transaction: bool = False,
    at_send: bool = False,
) -> SendFate:
    """The fate of `outcome`, whose send to `topic` failed with `error` after `resends` resends.

    `transaction`: the send was part of a transaction; `at_send`: the producer refused it before
    sending (a refusal that leaves the transaction usable).
    """
    if outcome.shadow:
        return Drop(f"shadow result lost: {error!r}")
    if isinstance(error, NOT_AUTHORIZED):
        return Stop(not_authorized(error, topic))
    if transaction and not (at_send and isinstance(error, REFUSED_FOR_GOOD)):
        return Abandon(f"the send to {topic} failed inside the transaction: {error!r}")
    if not isinstance(error, REFUSED_FOR_GOOD):
        return Retry(resends + 1)
    record = outcome.record
    if isinstance(outcome, DeadLetter) and outcome.hop is not None:  # the retry topic refuses it: dead-letter it
        return Reroute(dataclasses.replace(outcome, hop=None, final=True))
    if isinstance(outcome, Result):
        rejected = ResultRejectedError(f"the result of request {outcome.request_id!r} was refused: {error!r}")
        rejected.__cause__ = error
        model = model_of(outcome)
        return Reroute(DeadLetter(record, rejected, outcome.request_id, model, attempts=resends + 1))
    fatal = FatalError(
        f"the dead letter of {record.topic}[{record.partition}]@{record.offset} was refused by {topic}: {error!r}"
    )
    fatal.__cause__ = error
    return Stop(fatal)


def not_authorized(error: BaseException, topic: str) -> NotAuthorizedError:
    """The error that stops a worker whose principal may not write to `topic`."""
    stopped = NotAuthorizedError(
        f"the broker refused to let this worker write to topic {topic!r} ({type(error).__name__}): grant its "
        f"principal the WRITE (and DESCRIBE) ACL on topic {topic!r}"
    )
    stopped.__cause__ = error
    return stopped


def access_refused(error: BaseException, client: str, *, group: str, transactional_id: str = "") -> NotAuthorizedError:
    """The error that stops a worker whose `client` (consumer, producer ...) the broker refused for want of an ACL.

    The message names the ACL to grant: READ on the group, READ on the topics, WRITE on the
    transactional id; for the cluster (an idempotent producer's InitProducerId), WRITE on a topic,
    which implies IDEMPOTENT_WRITE since Kafka 3.0 (KIP-679).
    """
    if isinstance(error, GroupAuthorizationFailedError):
        grant = f"the READ ACL on group {group!r}"
    elif isinstance(error, TransactionalIdAuthorizationFailed):
        grant = f"the WRITE (and DESCRIBE) ACL on transactional id {transactional_id!r} (or a PREFIXED one)"
    elif isinstance(error, ClusterAuthorizationFailedError):
        grant = "the WRITE ACL on the topics it writes (or IDEMPOTENT_WRITE on the cluster)"
    else:
        grant = f"the READ (and DESCRIBE) ACL on topic {', '.join(repr(name) for name in _names(error))}"
    stopped = NotAuthorizedError(
        f"the broker refused this worker's {client} ({type(error).__name__}): grant its principal {grant}"
    )
    stopped.__cause__ = error
    return stopped


def _names(error: BaseException) -> list[str]:
    """The topic names an aiokafka authorization error carries (a name, or a set of them)."""
    names: list[str] = []
    for arg in error.args:
        names += sorted(map(str, arg)) if isinstance(arg, set | frozenset | list | tuple) else [str(arg)]
    return names


def model_of(result: Result) -> tuple[str, str, str] | None:
    """The model that scored a result, as its headers say: (name, version, "") — the sha256 is not on it."""
    found = {
        key: value.decode("utf-8", "replace") for key, value in result.headers if key in (h.MODEL, h.MODEL_VERSION)
    }
    if len(found) < 2:
        return None
    return found[h.MODEL], found[h.MODEL_VERSION], ""
