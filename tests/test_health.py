"""Liveness and readiness: the rules, the processes' reports, the HTTP endpoint and `worker --check`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from broker.local import free_port
from streamscore.cli import main
from worker.endpoint import Checks, check_ready, respond, serve_on_loop
from worker.health import (
    BROKER_BOUND_S,
    LIVE_BOUND_S,
    Facts,
    Verdict,
    combine,
    live_bound,
    liveness,
    read_reports,
    readiness,
    remove_report,
    write_report,
)
from worker.shared import MULTIPROC_VARIABLE, SharedEndpoint

READY = Facts(started=True, joined=True, assigned=3, since_fetch_s=0.1, since_broker_s=1.0)


def test_a_started_worker_that_fetches_and_reaches_the_broker_is_live_and_ready() -> None:
    """The healthy case: both checks pass."""
    assert (True, True) == (liveness(READY).ok, readiness(READY).ok)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"started": False}, "starting"),
        ({"stopping": True}, "stopping"),
        ({"joined": False}, "not in the consumer group"),
        ({"troubled": 2}, "2 outcomes being resent"),
        ({"since_broker_s": BROKER_BOUND_S + 1}, "broker unreachable"),
        ({"since_broker_s": None}, "broker unreachable"),
    ],
)
def test_readiness_fails_for_each_reason(change: dict[str, object], reason: str) -> None:
    """Each rule of the readiness check fails it on its own, and says so."""
    verdict = readiness(dataclasses.replace(READY, **change))  # type: ignore[arg-type]
    assert not verdict.ok
    assert reason in verdict.reason


def test_with_no_partitions_the_broker_probe_does_not_count() -> None:
    """A worker in the group with nothing assigned has nothing to probe: it is ready."""
    assert readiness(dataclasses.replace(READY, assigned=0, since_broker_s=None)).ok


def test_the_liveness_bound_outlasts_a_rebalance_drain() -> None:
    """A revocation may wait the shutdown grace inside a fetch: the bound is 30 s, or longer than that wait."""
    assert (LIVE_BOUND_S, 70.0) == (live_bound(5.0), live_bound(60.0))


def test_a_worker_that_stopped_fetching_is_not_live_but_a_starting_one_is() -> None:
    """No poll for longer than the bound: not live; still starting (connecting, loading): live."""
    assert not liveness(dataclasses.replace(READY, since_fetch_s=LIVE_BOUND_S + 1)).ok
    assert liveness(dataclasses.replace(READY, started=False, since_fetch_s=LIVE_BOUND_S + 1)).ok


def test_the_supervisor_combines_its_processes_reports(tmp_path: Path) -> None:
    """Every process must pass with a fresh report; a stale one is a stuck loop; a missing one is starting."""
    write_report(tmp_path, 11, 1000.0, Verdict(True, "fetching"), Verdict(True, "ready"))
    write_report(tmp_path, 12, 1000.0, Verdict(True, "fetching"), Verdict(False, "stopping"))
    reports = read_reports(tmp_path, {11: "process 0", 12: "process 1", 13: "process 2"})

    assert Verdict(True, "3 processes live") == combine(reports, 1001.0, "live")
    assert Verdict(False, "process 1: stopping") == combine(reports, 1001.0, "ready")
    assert Verdict(False, "process 0: silent for 40 s (event loop stuck?)") == combine(reports, 1040.0, "live")
    remove_report(tmp_path, 12)
    assert Verdict(False, "process 2: starting") == combine(
        read_reports(tmp_path, {11: "a", 13: "process 2"}), 1001, "ready"
    )
    assert not combine({}, 1001.0, "live").ok


def test_the_endpoint_answers_each_path() -> None:
    """/metrics is the scrape, /healthz and /readyz 200 or 503 with the reason, anything else 404."""
    checks = Checks(lambda: b"m 1\n", lambda: Verdict(True, "fetching"), lambda: Verdict(False, "stopping"))

    assert 200 == respond("GET", "/metrics", checks)[0]
    assert (200, b"ok: fetching\n") == respond("GET", "/healthz", checks)[::2]
    assert (503, b"not ok: stopping\n") == respond("GET", "/readyz?verbose", checks)[::2]
    assert 404 == respond("GET", "/", checks)[0]
    assert 405 == respond("POST", "/metrics", checks)[0]


async def test_the_event_loop_endpoint_and_the_check_command() -> None:
    """Served on the loop: the check reads /readyz over HTTP; `worker --check` exits 0 when ready, 1 when not."""
    ready = [True]
    checks = Checks(lambda: b"", lambda: Verdict(True, "fetching"), lambda: Verdict(ready[0], "why"))
    port = free_port()
    server = await serve_on_loop(port, checks)
    try:
        assert Verdict(True, "ok: why") == await asyncio.to_thread(check_ready, port)
        assert 0 == await asyncio.to_thread(main, ["worker", "--check", "--metrics-port", str(port)])
        ready[0] = False
        assert Verdict(False, "why") == await asyncio.to_thread(check_ready, port)
        assert 1 == await asyncio.to_thread(main, ["worker", "--check", "--metrics-port", str(port)])
    finally:
        server.close()
        await server.wait_closed()
    assert not (await asyncio.to_thread(check_ready, port)).ok


def test_the_supervisors_endpoint_answers_from_its_processes_reports(tmp_path: Path) -> None:
    """The shared endpoint reads the reports in its folder: ready once every process says so; closing it
    removes the folder and the multiprocess variable."""
    port = free_port()
    shared = SharedEndpoint(port, lambda: {4242: "process 0"})
    try:
        assert MULTIPROC_VARIABLE in os.environ
        assert Verdict(False, "process 0: starting") == check_ready(port)
        write_report(shared.folder, 4242, time.time(), Verdict(True, "fetching"), Verdict(True, "ready"))
        assert Verdict(True, "ok: 1 processes ready") == check_ready(port)
        shared.exited(4242)
        assert Verdict(False, "process 0: starting") == check_ready(port)
    finally:
        shared.close()
    assert not shared.folder.exists()
    assert MULTIPROC_VARIABLE not in os.environ
