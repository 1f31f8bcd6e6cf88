"""streamscore as its users run it: `streamscore worker --processes N` in a process of its own.

Its throughput is read from the results themselves: their count over the time from the first
result's broker timestamp to the last one's (so startup and the group join are left out, as
the in-process run leaves them out). Beside it: each worker process's peak resident memory
(VmHWM), and the broker's CPU over the run as a share of the machine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench import cluster
from worker.settings import setting_name

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ProcessRun:
    """What one `streamscore worker --processes N --burst` run did."""

    processes: int
    rows_per_s: float
    results: int
    peak_rss_mb: list[float]  # one per worker process
    broker_cpu_share: float  # of all cores, over the run


async def run_processes(
    settings: dict[str, object], processes: int, rows: int, results_topic: str, bootstrap: str
) -> ProcessRun:
    """Run a burst-mode worker with `processes` processes over its input; measure it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["PYTHONPATH"] = str(REPO)
    for name, value in {**settings, "processes": processes, "burst": True, "log_level": "warning"}.items():
        env[setting_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    broker_before, started = cluster.cpu_seconds(cluster.broker_pid), time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamscore", "worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peaks = await asyncio.to_thread(_watch_memory, process)
    if process.returncode != 0:
        raise RuntimeError(f"streamscore worker --processes {processes} exited with {process.returncode}")
    wall = time.perf_counter() - started
    broker_share = (cluster.cpu_seconds(cluster.broker_pid) - broker_before) / (wall * (os.cpu_count() or 1))
    count, first_ms, last_ms = await result_times(bootstrap, results_topic)
    span_s = max(1e-3, (last_ms - first_ms) / 1000)
    return ProcessRun(processes, count * rows / span_s, count, peaks, round(broker_share, 3))


def _watch_memory(process: subprocess.Popen[bytes]) -> list[float]:
    """Wait for the supervisor to exit; each worker child's peak RSS (MB), read while they run."""
    peaks: dict[int, float] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while process.poll() is None:
        for pid in _children(process.pid):
            peaks[pid] = max(peaks.get(pid, 0.0), vm_hwm_mb(pid))
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the worker run took longer than the bench allows")
        time.sleep(0.2)
    process.wait()
    return sorted(round(peak, 1) for peak in peaks.values())


def _children(parent: int) -> list[int]:
    """The worker processes the supervisor started (not multiprocessing's resource tracker); itself if none."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{parent}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
    except OSError:
        pass
    return found or [parent]


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def result_times(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """How many results `topic` holds, and the first and last of their timestamps (ms)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    count, first, last = 0, None, None
    try:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 2.0:
            batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for records in batches.values():
                idle_since = time.monotonic()
                count += len(records)
                stamps = [r.timestamp for r in records]
                first = min(stamps) if first is None else min(first, *stamps)
                last = max(stamps) if last is None else max(last, *stamps)
    finally:
        await consumer.stop()
    return count, first or 0, last or 0
