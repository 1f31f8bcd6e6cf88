"""Ending a model run that takes too long: onnxruntime stops a run whose RunOptions.terminate is set.

One daemon thread looks at the runs under watch every `TICK_S` and sets `terminate` on those past
their deadline; onnxruntime checks the flag between kernels and raises. Watching a run costs a
RunOptions and a dictionary entry, not a thread or a timer per run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import onnxruntime as ort

TICK_S = 0.05

_lock = threading.Lock()
_runs: dict[int, tuple[float, Any]] = {}  # run number -> (deadline, RunOptions)
_numbers = itertools.count()
_thread: threading.Thread | None = None


@contextmanager
def watched(timeout_s: float) -> Iterator[Any]:
    """RunOptions for one run that the watchdog terminates after `timeout_s` seconds."""
    options = ort.RunOptions()
    number = next(_numbers)
    with _lock:
        _runs[number] = (time.monotonic() + timeout_s, options)
        _start()
    try:
        yield options
    finally:
        with _lock:
            _runs.pop(number, None)


def _start() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_watch, name="inference-watchdog", daemon=True)
        _thread.start()


def _watch() -> None:
    while True:
        time.sleep(TICK_S)
        now = time.monotonic()
        with _lock:
            for deadline, options in _runs.values():
                if now >= deadline:
                    options.terminate = True
