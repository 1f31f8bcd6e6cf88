"""The parent process: start N worker processes, restart one that dies, stop them on a signal.

Signals only set flags. The first SIGTERM or SIGINT asks every child to drain and stop (each
child gets SIGTERM and has `shutdown_grace_s` to finish); a second one to the parent kills them
(SIGKILL). In a child, SIGTERM only ever asks for a graceful stop, however often it comes: sent
to the whole process group (systemd, `kill -TERM -- -PGID`, many process managers), a child gets
it twice, its own and the one the parent forwards, and must still drain and commit. Children
ignore SIGINT so that Ctrl-C on a terminal reaches them once, through the parent.
With a metrics port and N > 1 processes the parent serves their one endpoint (`worker/shared.py`);
one process serves its own (`worker/monitor.py`).
Exit codes: 0 all children stopped cleanly; 1 a child failed; 2 a child found the settings,
the model or its ACLs unusable (restarting would not help, so the parent stops them all).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import structlog

from schemas.errors import ConfigError, ModelLoadError, ModelNotFoundError
from worker.logs import configure_logging
from worker.monitor import make_observer, observe
from worker.observe import Observer
from worker.runner import Worker
from worker.settings import Settings
from worker.shared import SharedEndpoint
from worker.sharing import ShareWorker
from worker.tracing import start_tracing

log = structlog.get_logger("streamscore.supervisor")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 60.0
POLL_S = 0.2


def child_main(settings: Settings, reports: str | None = None, exporters: tuple[str, ...] = ()) -> None:
    """Entry point of a worker process (`reports`: the folder of the supervisor's metrics endpoint;
    `exporters`: the span exporters, none when tracing is off)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_format, settings.log_level, worker=settings.worker_name)
    try:
        code = asyncio.run(_serve(settings, Path(reports) if reports else None, exporters))
    except (ConfigError, ModelLoadError, ModelNotFoundError) as error:
        log.error("worker_unusable", error=str(error))
        code = EXIT_UNUSABLE
    except Exception as error:
        log.exception("worker_crashed", error=repr(error))
        code = EXIT_FAILED
    sys.exit(code)


def make_worker(settings: Settings, observer: Observer | None = None) -> Worker:
    """The worker of a consumer group, or of a share group (`consumption=share`)."""
    if settings.shared:
        return ShareWorker(settings, observer=observer)
    return Worker(settings, observer=observer)


async def _serve(settings: Settings, reports: Path | None, exporters: tuple[str, ...]) -> int:
    observer = make_observer() if settings.metrics_port else None
    tracing = start_tracing(exporters)
    traced = tracing.observer(observer or Observer(), settings.group_id) if tracing is not None else None
    worker = make_worker(settings, observer=traced or observer)
    worker.freeze_heap = True  # this process is the worker's own: its startup heap lives as long as it
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.request_stop)  # idempotent
    try:
        if observer is None:
            return await worker.run()
        return await observe(worker, observer, settings.metrics_port, reports)
    finally:
        if tracing is not None:
            tracing.shutdown()


@dataclass
class _Child:
    index: int
    process: BaseProcess
    started: float
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs `settings.processes` worker processes until they finish or a signal stops them."""

    settings: Settings
    children: dict[int, _Child] = field(default_factory=dict)
    signals: int = 0
    result: int = EXIT_OK
    shared: SharedEndpoint | None = None  # the metrics endpoint of N processes (one serves its own)
    exporters: tuple[str, ...] = ()  # the span exporters each process traces to (worker/tracing.py)

    def run(self) -> int:
        """Start the children, supervise them, return the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("supervisor_started", processes=self.settings.processes, pid=os.getpid())
        if self.settings.metrics_port and self.settings.processes > 1:
            self.shared = SharedEndpoint(self.settings.metrics_port, self._pids)
        try:
            for index in range(self.settings.processes):
                self._start(index, restarts=0)
            while self.children:
                time.sleep(POLL_S)
                for child in list(self.children.values()):
                    if not child.process.is_alive():
                        self._reap(child)
        finally:
            if self.shared is not None:
                self.shared.close()
        log.info("supervisor_stopped", exit_code=self.result)
        return self.result

    def _pids(self) -> dict[int, str]:
        """The processes running, by pid (called from the endpoint's thread: a copy of the table)."""
        children = self.children.copy()
        return {c.process.pid: f"process {i}" for i, c in children.items() if c.process.pid is not None}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("supervisor_stopping", signal=signal.Signals(signum).name)
            self._signal_children(signal.SIGTERM)
        else:
            log.warning("supervisor_killing", signal=signal.Signals(signum).name)
            self._signal_children(signal.SIGKILL)
            self.result = EXIT_FAILED

    def _signal_children(self, signum: int) -> None:
        for child in self.children.values():
            if child.process.pid is not None and child.process.is_alive():
                os.kill(child.process.pid, signum)

    def _start(self, index: int, restarts: int) -> None:
        name = f"{self.settings.worker_id}-{index}" if self.settings.worker_id else ""
        settings = self.settings.replace(worker_id=name)
        reports = str(self.shared.folder) if self.shared is not None else None
        process = multiprocessing.get_context("spawn").Process(
            target=child_main,
            args=(settings, reports, self.exporters),
            name=f"streamscore-worker-{index}",
            daemon=False,
        )
        process.start()
        self.children[index] = _Child(index, process, time.monotonic(), restarts)
        log.info("worker_process_started", index=index, pid=process.pid, restarts=restarts)

    def _reap(self, child: _Child) -> None:
        del self.children[child.index]
        code = child.process.exitcode
        if self.shared is not None and child.process.pid is not None:
            self.shared.exited(child.process.pid)
        if self.signals or (code == EXIT_OK and self.settings.burst):
            if code not in (EXIT_OK, None):
                self.result = EXIT_FAILED
            log.info("worker_process_exited", index=child.index, exit_code=code)
            return
        if code == EXIT_UNUSABLE:
            log.error(
                "worker_process_unusable",
                index=child.index,
                hint="fix the settings or the model folder; restarting would not help",
            )
            self.result = EXIT_UNUSABLE
            self.signals += 1
            self._signal_children(signal.SIGTERM)
            return
        restarts = 0 if time.monotonic() - child.started > STABLE_AFTER_S else child.restarts + 1
        delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
        log.warning("worker_process_died", index=child.index, exit_code=code, restart_in_s=delay)
        time.sleep(delay)
        if not self.signals:
            self._start(child.index, restarts)
