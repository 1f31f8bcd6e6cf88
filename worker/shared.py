"""One endpoint for N worker processes: prometheus-client's multiprocess mode, and the processes' reports.

The supervisor makes a private folder, names it in PROMETHEUS_MULTIPROC_DIR before it starts any
process (a spawned process inherits the variable, and prometheus-client reads it when imported,
so every metric there writes its values to files in the folder), and serves from a thread: the
metrics of every process summed (`MultiProcessCollector`), liveness and readiness from the reports
each process writes there (`worker/health.py`). A process that exits is marked dead (its live
gauges leave the sum; its counters stay) and its report removed; the folder goes at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from schemas.errors import ConfigError
from worker.endpoint import Checks, ThreadEndpoint
from worker.health import Verdict, combine, read_reports, remove_report
from worker.settings import setting_name

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class SharedEndpoint:
    """The supervisor's endpoint over the files of its processes; `processes()` names the live ones by pid."""

    def __init__(self, port: int, processes: Callable[[], Mapping[int, str]]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="streamscore-metrics-"))
        os.environ[MULTIPROC_VARIABLE] = str(self.folder)  # for the processes started from now on
        self.processes = processes
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(self.folder))  # type: ignore[no-untyped-call]
        checks = Checks(
            lambda: generate_latest(self.registry), lambda: self._verdict("live"), lambda: self._verdict("ready")
        )
        try:
            self.endpoint = ThreadEndpoint(port, checks)
        except OSError as error:
            self.close()
            raise ConfigError(f"{setting_name('metrics_port')}: cannot listen on port {port}: {error}") from error
        self.endpoint.start()

    def _verdict(self, check: str) -> Verdict:
        return combine(read_reports(self.folder, self.processes()), time.time(), check)

    def exited(self, pid: int) -> None:
        """A process is gone: its live gauges leave the sums, its report goes."""
        mark_process_dead(pid, str(self.folder))  # type: ignore[no-untyped-call]
        remove_report(self.folder, pid)

    def close(self) -> None:
        """Stop serving and remove the folder."""
        if hasattr(self, "endpoint"):
            self.endpoint.stop()
        os.environ.pop(MULTIPROC_VARIABLE, None)
        shutil.rmtree(self.folder, ignore_errors=True)
