"""Logging: a log line never raises, and aiokafka's start-up coordinator retries do not read as failures."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest
import structlog
from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

from worker.logs import (
    COORDINATOR_LOGGER,
    CoordinatorLookupFilter,
    configure_logging,
    is_coordinator_lookup_retry,
    render_json,
)


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logging configured onto a fresh stderr; structlog and the root logger restored afterwards."""
    root, coordinator = logging.getLogger(), logging.getLogger(COORDINATOR_LOGGER)
    saved = (root.handlers[:], root.level, coordinator.filters[:], structlog.get_config())
    stream = io.StringIO()
    stream.isatty = lambda: False  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("json", "info")
    try:
        yield stream
    finally:
        root.handlers, coordinator.filters = saved[0], saved[2]
        root.setLevel(saved[1])
        structlog.configure(**saved[3])
        structlog.contextvars.clear_contextvars()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"event": "e", "request_id": "\ud800"}, id="lone-surrogate"),
        pytest.param({"event": "e", "count": 2**70}, id="integer-past-64-bits"),
        pytest.param({"event": "e", "by_key": {("a", 1): 1}}, id="key-not-a-string"),
    ],
)
def test_render_json_never_raises(event: dict[str, object]) -> None:
    """What orjson refuses is still rendered as one line of valid JSON."""
    line = render_json(event)

    assert "e" == json.loads(line)["event"]
    assert "\n" not in line


def test_a_lone_surrogate_is_written_escaped() -> None:
    """A request id holding a lone surrogate is logged as the escape \\ud800."""
    line = render_json({"event": "record_dead_lettered", "request_id": "a\ud800b"})

    assert '"request_id": "a\\ud800b"' in line
    line.encode("utf-8")  # the line itself is encodable


def test_a_log_call_with_unencodable_text_does_not_raise(stderr: io.StringIO) -> None:
    """Through the configured JSON logging, a warning whose request id is a lone surrogate is written."""
    structlog.get_logger("streamscore.worker").warning("record_dead_lettered", request_id="\ud800")

    [line] = _lines(stderr)
    assert ("record_dead_lettered", "\ud800") == (line["event"], line["request_id"])


def _coordinator_record(error: Exception, level: int = logging.ERROR) -> logging.LogRecord:
    """The record aiokafka's group coordinator makes: log.error("Group Coordinator Request failed: %s", err)."""
    return logging.LogRecord(
        COORDINATOR_LOGGER, level, "group_coordinator.py", 566, "Group Coordinator Request failed: %s", (error,), None
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(_coordinator_record(GroupCoordinatorNotAvailableError()), True, id="retriable"),
        pytest.param(_coordinator_record(GroupAuthorizationFailedError()), False, id="not-retriable"),
        pytest.param(
            _coordinator_record(GroupCoordinatorNotAvailableError(), logging.WARNING), False, id="not-an-error"
        ),
        pytest.param(
            logging.LogRecord(COORDINATOR_LOGGER, logging.ERROR, "f.py", 1, "Heartbeat failed: %s", ("x",), None),
            False,
            id="another-message",
        ),
    ],
)
def test_only_retriable_coordinator_lookups_are_downgraded(record: logging.LogRecord, expected: bool) -> None:
    """The filter picks out exactly the error-level coordinator lookup that aiokafka retries."""
    assert expected == is_coordinator_lookup_retry(record)


def test_the_filter_downgrades_to_info_and_passes_other_records() -> None:
    """A retriable lookup becomes an info record (dropped while info is not enabled); others pass unchanged."""
    retry, other = _coordinator_record(GroupCoordinatorNotAvailableError()), _coordinator_record(ValueError("x"))

    shown = CoordinatorLookupFilter().filter(retry)

    assert (False, logging.INFO, "INFO") == (shown, retry.levelno, retry.levelname)
    assert (True, logging.ERROR) == (CoordinatorLookupFilter().filter(other), other.levelno)


def test_configured_logging_keeps_the_coordinator_retry_out_of_error_lines(stderr: io.StringIO) -> None:
    """Scenario: aiokafka logs the retriable coordinator lookup, then a real error, through the
    configured JSON logging. Only the real error is written, at error level."""
    coordinator = logging.getLogger(COORDINATOR_LOGGER)

    coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    coordinator.error("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())

    lines = _lines(stderr)
    assert [("error", "Group Coordinator Request failed: [Error 30] GroupAuthorizationFailedError")] == [
        (line["level"], line["event"]) for line in lines
    ]
    assert 1 == sum(isinstance(f, CoordinatorLookupFilter) for f in coordinator.filters)
    orjson.dumps(lines)  # every line was valid JSON
