"""One worker process (settings from STREAMSCORE_* variables) whose model holds each run for a while.

    python -m bench.slow_worker MS_PER_ROW

Each model run first sleeps rows x MS_PER_ROW milliseconds, then scores as usual: the time of a
model that runs off this machine's CPU (a GPU, a remote model server), for `python -m bench.share`.
Bench-only: nothing in streamscore's packages knows of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from artifacts.runtime import LoadedModel
from worker.logs import configure_logging
from worker.runner import Worker
from worker.settings import from_sources
from worker.supervisor import make_worker


def hold_each_run(ms_per_row: float) -> None:
    """Make every LoadedModel.run sleep rows x ms_per_row before it scores."""
    run = LoadedModel.run

    def slow_run(self: LoadedModel, feeds: Mapping[str, Any], timeout_s: float | None = None) -> Any:
        rows = next(iter(feeds.values())).shape[0]
        time.sleep(rows * ms_per_row / 1000)
        return run(self, feeds, timeout_s)

    LoadedModel.run = slow_run  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    hold_each_run(float(argv[0]))
    settings = from_sources(os.environ)
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(serve(make_worker(settings)))


async def serve(worker: Worker) -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.request_stop)
    return await worker.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
