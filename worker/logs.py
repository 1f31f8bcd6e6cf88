"""Logging, configured once per process: JSON lines in production, readable on a terminal.

A log line never raises: text that UTF-8 cannot encode (a lone surrogate from a request) is
written escaped. aiokafka's "Group Coordinator Request failed" for a retriable error, which it
logs at error level on nearly every start while the group coordinator loads, is downgraded to
info (hidden at the default level of aiokafka's loggers, warning).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import orjson
import structlog

#: aiokafka's logger of the message below, and the message.
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
COORDINATOR_LOOKUP_FAILED = "Group Coordinator Request failed"


def render_json(event: Any, **_: Any) -> str:
    """One JSON log line; never raises."""
    try:
        return orjson.dumps(event, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an integer past 64 bits, a key not a string
        pass
    try:
        return json.dumps(event, default=str)  # ASCII: a lone surrogate is written as the escape \ud800
    except (TypeError, ValueError):  # a key not a string, a cycle: the line as text
        name = event.get("event") if isinstance(event, dict) else None
        return json.dumps({"event": name if isinstance(name, str) else "log_line", "unrenderable": ascii(event)})


class CoordinatorLookupFilter(logging.Filter):
    """Downgrades aiokafka's "Group Coordinator Request failed" to info when its error is retriable.

    aiokafka retries such errors itself (the coordinator is still loading); a non-retriable one
    stays at error level, and so does every other message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_coordinator_lookup_retry(record):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def is_coordinator_lookup_retry(record: logging.LogRecord) -> bool:
    """True for aiokafka's error-level "Group Coordinator Request failed" with a retriable error."""
    if record.levelno < logging.ERROR or not str(record.msg).startswith(COORDINATOR_LOOKUP_FAILED):
        return False
    args = record.args if isinstance(record.args, tuple) else ()
    return bool(args) and getattr(args[0], "retriable", False) is True


def configure_logging(log_format: str = "auto", level: str = "info", **context: Any) -> None:
    """Set up structlog for this process; `context` (e.g. worker) is bound to every line."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=render_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),  # one write per line
        cache_logger_on_first_use=True,
    )
    _route_stdlib(renderer)
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def _route_stdlib(renderer: Any) -> None:
    """aiokafka and onnxruntime log through `logging`: render their warnings the same way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    coordinator = logging.getLogger(COORDINATOR_LOGGER)
    if not any(isinstance(f, CoordinatorLookupFilter) for f in coordinator.filters):
        coordinator.addFilter(CoordinatorLookupFilter())
