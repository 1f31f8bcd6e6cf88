"""The chaos suite's workers: `streamscore worker` supervisors as subprocesses, each in its own process group.

A `Workers` is one supervisor and the worker processes it starts (`processes=N`); its JSON log
is its own file, so that what each process did (`partitions_assigned`, `partitions_revoked`,
`worker_process_died`, ...) can be read back by pid. Resident memory is read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import start_worker, worker_children

STOP_TIMEOUT_S = 90.0


@dataclass
class Workers:
    """One supervisor (its own process group) and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    name: str

    @classmethod
    def start(cls, settings: dict[str, Any], log: Path, name: str) -> Workers:
        return cls(start_worker(settings, log, new_session=True), log, name)

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """The worker processes alive now."""
        if self.process.poll() is not None:
            return []
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            return sorted(worker_children(self.pid))
        return []

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines of the log (one `event` only, if `name`)."""
        return [e for e in json_lines(self.log) if name is None or e.get("event") == name]

    async def next_event(self, name: str, pid: int, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait for the next `name` event that process `pid` logs (from now on; the log read every 5 ms)."""
        seen = sum(1 for e in self.events(name) if worker_pid(e) == pid)
        async with asyncio.timeout(timeout_s):
            while True:
                mine = [e for e in self.events(name) if worker_pid(e) == pid]
                if len(mine) > seen:
                    return mine[seen]
                await asyncio.sleep(0.005)

    async def ready(self, processes: int, timeout_s: float = 90.0) -> list[int]:
        """Wait until `processes` worker processes run and each has logged `worker_started`; their pids."""
        deadline = time.monotonic() + timeout_s
        while True:
            children = self.children()
            started = {worker_pid(e) for e in self.events("worker_started")}
            if len(children) == processes and set(children) <= started:
                return children
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {len(children)} of {processes} processes started ({self.log})")
            await asyncio.sleep(0.2)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM to the whole process group (as systemd sends it); the supervisor's exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout_s)

    def kill(self) -> None:
        """SIGKILL the whole process group (cleanup)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a file (other lines, e.g. a library's own output, skipped)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_bytes().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def worker_pid(event: dict[str, Any]) -> int | None:
    """The pid of the worker process that logged `event` (its name is `<host>-<pid>`)."""
    name = str(event.get("worker", ""))
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def partitions_of(event: dict[str, Any]) -> set[int]:
    """The partition numbers an assignment or revocation event names (`topic[3]` -> 3)."""
    return {int(name.rsplit("[", 1)[1].rstrip("]")) for name in event.get("partitions", ())}


def held_by(events: Iterable[dict[str, Any]], pid: int) -> set[int]:
    """The partitions process `pid` held after the events given (its last assignment, unless revoked since)."""
    held: set[int] = set()
    for event in events:
        if worker_pid(event) != pid:
            continue
        if event.get("event") == "partitions_assigned":
            held = partitions_of(event)
        elif event.get("event") == "partitions_revoked":
            held -= partitions_of(event)
    return held


def ever_held_by(events: Iterable[dict[str, Any]], pid: int) -> set[int]:
    """Every partition process `pid` was ever assigned."""
    held: set[int] = set()
    for event in events:
        if worker_pid(event) == pid and event.get("event") == "partitions_assigned":
            held |= partitions_of(event)
    return held


def count(events: Iterable[dict[str, Any]], name: str) -> int:
    """How many events are called `name`."""
    return sum(1 for e in events if e.get("event") == name)


def rss_mb(pid: int) -> float | None:
    """The resident memory of a process, in MB (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class RssSampler:
    """Samples the resident memory of a supervisor's worker processes every `interval_s`."""

    def __init__(self, workers: Workers, interval_s: float = 0.1) -> None:
        self.workers, self.interval_s = workers, interval_s
        self.samples: list[tuple[float, int, float]] = []  # (monotonic time, pid, MB)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rss-sampler")

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for pid in self.workers.children():
                mb = rss_mb(pid)
                if mb is not None:
                    self.samples.append((now, pid, mb))
            await asyncio.sleep(self.interval_s)

    def peak(self, since: float = 0.0) -> float:
        """The largest sample taken at or after `since` (monotonic time)."""
        return max((mb for at, _, mb in self.samples if at >= since), default=0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
