"""Optional tracing: a span per record, the child of the request's traceparent, whose context the result carries."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import worker
from schemas import headers as h
from schemas.codec import encode_request
from tests.fakes import FakeClients, FakeCluster
from tests.test_runner import DLT, IN, OUT, PARTITIONS, model_root, settings_for
from worker.observe import Observer
from worker.runner import Worker
from worker.tracing import Tracing, TracingObserver, start_tracing, trace_exporters

__all__ = ["model_root"]  # the module-scoped fixture of test_runner, used here too

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
CORRELATION = [("traceparent", TRACEPARENT), ("tracestate", b"vendor=opaque"), ("baggage", b"tenant=acme")]
GROUP = "streamscore"
T = TypeVar("T")


@pytest.fixture
def cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.create(IN, PARTITIONS)
    return cluster


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced(exporter: InMemorySpanExporter) -> TracingObserver:
    """The base observer's hooks, with spans exported to `exporter` as each one ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingObserver(Observer(), provider.get_tracer("tests"), GROUP)


def request(cluster: FakeCluster, request_id: str, headers: list[tuple[str, bytes]]) -> None:
    """A one-row request for the MLP on partition 0, keyed by its id."""
    value = encode_request({"x": np.ones((1, 8), dtype=np.float32)}, id=request_id)
    cluster.append(IN, value, key=request_id.encode(), headers=headers, partition=0)


async def burst(model_root: Path, cluster: FakeCluster, observer: Observer | None = None) -> None:
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster), observer=observer)
    assert 0 == await asyncio.wait_for(worker.run(), 30)


def only(found: Sequence[T]) -> T:
    """The one span or record there must be."""
    assert 1 == len(found)
    return found[0]


async def test_a_request_with_a_traceparent_gets_a_child_span_with_the_messaging_attributes(
    model_root: Path, cluster: FakeCluster, exporter: InMemorySpanExporter
) -> None:
    """The span `process requests` is a CONSUMER span of the request's trace, its parent the request's
    span, with the messaging attributes, the model that scored it and the outcome; its status is unset."""
    request(cluster, "r1", CORRELATION)

    await burst(model_root, cluster, traced(exporter))

    span = only(exporter.get_finished_spans())
    assert "process requests" == span.name
    assert SpanKind.CONSUMER == span.kind
    assert span.parent is not None and span.parent.is_remote
    assert (int(TRACE_ID, 16), int(PARENT_ID, 16)) == (span.parent.trace_id, span.parent.span_id)
    assert int(TRACE_ID, 16) == span.context.trace_id
    assert {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": IN,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.consumer.group.name": GROUP,
        "messaging.kafka.message.key": "r1",
        "streamscore.request.id": "r1",
        "streamscore.model.name": "mlp",
        "streamscore.model.version": "2",
        "streamscore.outcome": "result",
    } == dict(span.attributes or {})
    assert StatusCode.UNSET == span.status.status_code


async def test_the_result_carries_the_span_context_in_place_of_the_request_s(
    model_root: Path, cluster: FakeCluster, exporter: InMemorySpanExporter
) -> None:
    """The result's traceparent names the worker's span (same trace, sampled); its tracestate is the
    request's, passed on; the other correlation headers and the model headers are as without tracing."""
    request(cluster, "r1", CORRELATION)

    await burst(model_root, cluster, traced(exporter))

    span = only(exporter.get_finished_spans())
    expected = [
        ("traceparent", f"00-{TRACE_ID}-{span.context.span_id:016x}-01".encode()),
        ("tracestate", b"vendor=opaque"),
        ("baggage", b"tenant=acme"),
        (h.MODEL, b"mlp"),
        (h.MODEL_VERSION, b"2"),
    ]
    assert expected == list(only(cluster.records(OUT)).headers)


async def test_a_request_without_a_traceparent_starts_a_trace_its_result_carries(
    model_root: Path, cluster: FakeCluster, exporter: InMemorySpanExporter
) -> None:
    """No traceparent: the span is a root (sampled, random trace id), and the result gets a traceparent all the same."""
    request(cluster, "r1", [])

    await burst(model_root, cluster, traced(exporter))

    span = only(exporter.get_finished_spans())
    assert span.parent is None
    context = span.context
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()
    assert [("traceparent", traceparent), (h.MODEL, b"mlp"), (h.MODEL_VERSION, b"2")] == list(
        only(cluster.records(OUT)).headers
    )


async def test_a_dead_letter_s_span_has_error_status_with_the_stage_and_reason(
    model_root: Path, cluster: FakeCluster, exporter: InMemorySpanExporter
) -> None:
    """A record that is not JSON: its span ends with status ERROR ("decode: ..."), the outcome
    dead_letter, the stage and error class, and the exception recorded; the dead letter keeps the
    request's own traceparent (a replay continues the request's trace)."""
    cluster.append(IN, b"not json", key=b"\xff\xfe", headers=CORRELATION, partition=1)

    await burst(model_root, cluster, traced(exporter))

    span = only(exporter.get_finished_spans())
    assert StatusCode.ERROR == span.status.status_code
    assert (span.status.description or "").startswith("decode: ")
    attributes = dict(span.attributes or {})
    assert ("dead_letter", "decode", "DecodeError") == (
        attributes["streamscore.outcome"],
        attributes["streamscore.dead_letter.stage"],
        attributes["error.type"],
    )
    assert "messaging.kafka.message.key" not in attributes  # not a string
    assert ["exception"] == [event.name for event in span.events]
    assert ("traceparent", TRACEPARENT) in only(cluster.records(DLT)).headers


async def test_without_tracing_results_keep_the_request_s_headers_byte_for_byte(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Tracing off (no OTEL_* variable): no tracer starts, and the result carries the request's
    correlation headers as they came, then the model's."""
    request(cluster, "r1", CORRELATION)

    assert start_tracing(trace_exporters({"PATH": "/usr/bin"})) is None
    await burst(model_root, cluster)

    assert [*CORRELATION, (h.MODEL, b"mlp"), (h.MODEL_VERSION, b"2")] == list(only(cluster.records(OUT)).headers)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "scorer"}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp_proto_grpc",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp_proto_grpc", "console")),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ("otlp_proto_http",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp_proto_grpc",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp_proto_grpc",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, ()),
    ],
)
def test_which_variables_turn_tracing_on(environ: dict[str, str], expected: tuple[str, ...]) -> None:
    """An exporter named, or an OTLP endpoint, turns tracing on; `none` or OTEL_SDK_DISABLED keep it off."""
    assert expected == trace_exporters(environ)


def test_an_exporter_not_installed_leaves_tracing_off_and_says_what_to_install() -> None:
    """OTLP asked for without its package: no tracer, and a warning naming the package."""
    with structlog.testing.capture_logs() as logs:
        assert start_tracing(("otlp_proto_http",)) is None
    assert [("tracing_unavailable", "pip install opentelemetry-exporter-otlp-proto-http")] == [
        (entry["event"], entry["hint"]) for entry in logs
    ]


async def test_tracing_exports_in_batches_under_the_streamscore_service_name(
    model_root: Path, cluster: FakeCluster, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's `Tracing`: its spans reach the exporter at shutdown, service.name streamscore
    unless OTEL_SERVICE_NAME says otherwise."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    request(cluster, "r1", CORRELATION)
    tracing = Tracing([exporter])

    await burst(model_root, cluster, tracing.observer(Observer(), GROUP))
    tracing.shutdown()

    assert "streamscore" == only(exporter.get_finished_spans()).resource.attributes["service.name"]


def without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """worker.tracing imported afresh as if the `otel` extra were not installed (all restored after the test)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry...` raises ImportError
    for name in ("worker.tracing", "worker.supervisor"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(worker, "tracing", worker.tracing)
    return importlib.import_module("worker.tracing")


async def test_without_the_extra_the_worker_imports_and_runs_untraced(
    model_root: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenTelemetry missing: worker.tracing and the supervisor import, tracing asked for only warns
    with the extra to install, and the worker scores with the request's headers on its results."""
    tracing = without_opentelemetry(monkeypatch)
    importlib.import_module("worker.supervisor")
    request(cluster, "r1", CORRELATION)

    assert not tracing.AVAILABLE
    with structlog.testing.capture_logs() as logs:
        assert tracing.start_tracing(("console",)) is None
    assert ["pip install 'streamscore[otel]'"] == [entry["hint"] for entry in logs]
    await burst(model_root, cluster)

    assert [*CORRELATION, (h.MODEL, b"mlp"), (h.MODEL_VERSION, b"2")] == list(only(cluster.records(OUT)).headers)
