"""Liveness and readiness: pure decisions from a process's facts, and from its processes' reports.

A process is **live** while its event loop answers (the endpoint runs on that loop, or the loop
writes the report the supervisor reads) and it fetched, or polled while paused, within
LIVE_BOUND_S, or the shutdown grace plus REBALANCE_MARGIN_S if that is longer (a rebalance waits
inside a fetch for the revoked partitions' records in flight, up to the grace); before its main
loop starts (connecting, loading the model) it is live as long as its loop answers.

A process is **ready** once it started (connected, default model loaded), joined its group (an
assignment came, even an empty one), is not stopping, has no outcome the broker has not taken
(`Sender.troubled`: a resend in progress means the broker refuses or cannot be reached), and the
broker answered its last probe (end offsets of its partitions, every few seconds) within
BROKER_BOUND_S. With no partitions assigned there is nothing to probe: the sender alone decides.

Under `--processes N` each process writes its verdicts to a small report file every second; the
supervisor is live when every process is (a report older than LIVE_BOUND_S is a stuck loop), and
ready when every process is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Report = dict[str, Any]  # {"at": unix time, "live": [ok, reason], "ready": [ok, reason]}

LIVE_BOUND_S = 30.0
REBALANCE_MARGIN_S = 10.0
BROKER_BOUND_S = 15.0
REPORT_PREFIX = "health-"


@dataclass(frozen=True)
class Verdict:
    """Whether a check passes, and why (one line)."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class Facts:
    """What one worker process knows about itself, sampled on its event loop."""

    started: bool
    stopping: bool = False
    joined: bool = False
    assigned: int = 0
    since_fetch_s: float = 0.0
    troubled: int = 0
    since_broker_s: float | None = None  # since the broker last answered a probe; None: never probed
    live_bound_s: float = LIVE_BOUND_S  # the longest a fetch may take: see live_bound


def live_bound(shutdown_grace_s: float) -> float:
    """How long a live process may go without a fetch: LIVE_BOUND_S, or longer than a rebalance may wait."""
    return max(LIVE_BOUND_S, shutdown_grace_s + REBALANCE_MARGIN_S)


def liveness(facts: Facts) -> Verdict:
    """Live: fetching (or polling while paused) within its bound, or still starting."""
    if not facts.started:
        return Verdict(True, "starting")
    if facts.since_fetch_s > facts.live_bound_s:
        return Verdict(False, f"no fetch for {facts.since_fetch_s:.0f} s (bound {facts.live_bound_s:.0f} s)")
    return Verdict(True, "fetching")


def readiness(facts: Facts) -> Verdict:
    """Ready: started, joined, not stopping, nothing being resent, the broker answering."""
    if not facts.started:
        return Verdict(False, "starting: connecting to the broker, loading the model")
    if facts.stopping:
        return Verdict(False, "stopping")
    if not facts.joined:
        return Verdict(False, "not in the consumer group yet")
    if facts.troubled:
        return Verdict(False, f"{facts.troubled} outcomes being resent: the broker refuses them or is unreachable")
    if facts.assigned and (facts.since_broker_s is None or facts.since_broker_s > BROKER_BOUND_S):
        silent = "never" if facts.since_broker_s is None else f"not for {facts.since_broker_s:.0f} s"
        return Verdict(False, f"broker unreachable: it answered {silent} (bound {BROKER_BOUND_S:.0f} s)")
    return Verdict(True, f"ready, {facts.assigned} partitions assigned")


# ---------------------------------------------------------------------- processes' reports


def write_report(folder: Path, pid: int, now: float, live: Verdict, ready: Verdict) -> None:
    """Replace this process's report (atomically: the supervisor never reads half a file)."""
    report = {"at": now, "live": [live.ok, live.reason], "ready": [ready.ok, ready.reason]}
    path = folder / f"{REPORT_PREFIX}{pid}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(report))
    os.replace(temporary, path)


def read_reports(folder: Path, pids: Mapping[int, str]) -> dict[str, Report | None]:
    """Each process's report by name (None: none yet, or unreadable)."""
    reports: dict[str, Report | None] = {}
    for pid, name in pids.items():
        try:
            reports[name] = orjson.loads((folder / f"{REPORT_PREFIX}{pid}.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            reports[name] = None
    return reports


def remove_report(folder: Path, pid: int) -> None:
    """Forget a process that exited."""
    (folder / f"{REPORT_PREFIX}{pid}.json").unlink(missing_ok=True)


def combine(reports: Mapping[str, Report | None], now: float, check: str) -> Verdict:
    """`check` ("live" or "ready") of all processes: each must pass it, with a fresh report.

    A process without a report yet is starting: live, not ready."""
    if not reports:
        return Verdict(False, "no worker process running")
    for name, report in sorted(reports.items()):
        if report is None:
            if check == "ready":
                return Verdict(False, f"{name}: starting")
            continue
        age = now - float(report["at"])
        if age > LIVE_BOUND_S:
            return Verdict(False, f"{name}: silent for {age:.0f} s (event loop stuck?)")
        ok, reason = bool(report[check][0]), str(report[check][1])
        if not ok:
            return Verdict(False, f"{name}: {reason}")
    return Verdict(True, f"{len(reports)} processes {'live' if check == 'live' else 'ready'}")
