"""Optional tracing (the `otel` extra): a span per record, from its fetch to its outcome's acknowledgement.

Off unless the standard OpenTelemetry variables ask for it (`trace_exporters`, read once by the
command line); then each worker process starts a `Tracing` (an SDK tracer provider exporting in
batches) and wraps its observer in a `TracingObserver`. The span, `process <topic>`, follows the
messaging semantic conventions (kind CONSUMER) and is the child of the request's `traceparent`
(W3C Trace Context, from the Kafka headers); a result carries the span's own `traceparent` and
`tracestate` instead of the request's, so whoever reads the results continues the trace.

Without the extra the module still imports (`AVAILABLE` is False) and the worker runs untraced.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import TopicPartition

from schemas.records import Record
from worker.batcher import Batch
from worker.observe import Observer
from worker.outcomes import DeadLetter, Item, Outcome, Result
from worker.policy import model_of
from worker.sender import stage_of

try:  # the `otel` extra
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("streamscore.worker")

TRACE_HEADERS = ("traceparent", "tracestate")  # what a result's headers take from its span, not its request
EXPORTER_GROUP = "opentelemetry_traces_exporter"  # the entry points the SDK's exporters register under
DEFAULT_SERVICE_NAME = "streamscore"
INSTALL_HINTS = {
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "zipkin": "opentelemetry-exporter-zipkin",
}


def trace_exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OpenTelemetry variables ask for; none: tracing is off.

    OTEL_SDK_DISABLED=true turns it off; else OTEL_TRACES_EXPORTER names them (comma-separated,
    `none` ignored); else an OTLP endpoint (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    OTEL_EXPORTER_OTLP_ENDPOINT) means `otlp`. `otlp` is resolved by the OTLP protocol variable, as
    the Python SDK does: `otlp_proto_http` for http/protobuf, else `otlp_proto_grpc`.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if named:
        names = [name.strip().lower() for name in named.split(",")]
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        names = ["otlp"]
    else:
        return ()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    otlp = "otlp_proto_http" if protocol.strip() == "http/protobuf" else "otlp_proto_grpc"
    resolved = (otlp if name == "otlp" else name for name in names if name and name != "none")
    return tuple(dict.fromkeys(resolved))


class Tracing:
    """A tracer provider exporting in batches to `exporters`: start one per process, `shutdown()` at its end."""

    def __init__(self, exporters: Sequence[Any]) -> None:
        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER, parent-based
        for exporter in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("streamscore.worker")

    def observer(self, inner: Observer, group: str) -> TracingObserver:
        """`inner`'s hooks, with a span per record."""
        return TracingObserver(inner, self.tracer, group)

    def shutdown(self) -> None:
        """Export the spans still buffered, stop the exporters."""
        self.provider.shutdown()


def start_tracing(names: Sequence[str]) -> Tracing | None:
    """Tracing to the exporters `names` (`trace_exporters`); None, with a warning saying what to
    install, when they are none, the extra is missing or an exporter is not installed."""
    if not names:
        return None
    if not AVAILABLE:
        log.warning("tracing_unavailable", exporters=list(names), hint="pip install 'streamscore[otel]'")
        return None
    exporters = []
    for name in names:
        found = entry_points(group=EXPORTER_GROUP, name=name)
        if not found:
            package = INSTALL_HINTS.get(name, f"the package that registers the span exporter {name!r}")
            log.warning("tracing_unavailable", exporter=name, hint=f"pip install {package}")
            return None
        exporters.append(next(iter(found)).load()())
    log.info("tracing_started", exporters=list(names))
    return Tracing(exporters)


class TracingObserver(Observer):
    """`inner`'s hooks (metrics, counts), plus a span per record: started when it is fetched, ended
    when its outcome is acknowledged (a shadow version's result is not waited for)."""

    def __init__(self, inner: Observer, tracer: Tracer, group: str) -> None:
        super().__init__()
        self.inner = inner
        self.counts = inner.counts
        self.tracer = tracer
        self.group = group
        self.propagator = TraceContextTextMapPropagator()
        self._spans: dict[tuple[str, int, int], Span] = {}  # in-flight records' spans

    def consumed(self, record: Record) -> None:
        self.inner.consumed(record)
        key = _key(record)
        stale = self._spans.pop(key, None)
        if stale is not None:  # read again: its outcome was lost with its transaction (exactly once)
            stale.set_attribute("streamscore.outcome", "abandoned")
            stale.end()
        carrier = {name: value.decode("latin-1") for name, value in record.headers if name in TRACE_HEADERS}
        self._spans[key] = self.tracer.start_span(
            f"process {record.topic}",
            context=self.propagator.extract(carrier),
            kind=trace.SpanKind.CONSUMER,
            attributes=record_attributes(record, self.group),
        )

    def started(self, batch: Batch[Item]) -> None:
        self.inner.started(batch)

    def scored(self, batch: Batch[Item]) -> None:
        self.inner.scored(batch)

    def outgoing(self, outcome: Outcome) -> Outcome:
        outcome = self.inner.outgoing(outcome)
        span = self._spans.get(_key(outcome.record))
        if not isinstance(outcome, Result) or span is None:
            return outcome
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        kept = [(name, value) for name, value in outcome.headers if name not in TRACE_HEADERS]
        return dataclasses.replace(outcome, headers=[(k, v.encode()) for k, v in carrier.items()] + kept)

    def finished(self, outcome: Outcome) -> None:
        self.inner.finished(outcome)
        if outcome.shadow:
            return
        span = self._spans.pop(_key(outcome.record), None)
        if span is None:
            return
        span.set_attributes(outcome_attributes(outcome))
        if isinstance(outcome, DeadLetter):
            error = outcome.error
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{stage_of(error)}: {error}"))
        span.end()

    def released(self, record: Record) -> None:
        self.inner.released(record)
        span = self._spans.pop(_key(record), None)
        if span is not None:  # delivered again, maybe to another worker: this span ends here
            span.set_attribute("streamscore.outcome", "released")
            span.end()

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.inner.assigned(partitions)

    def summary(self) -> dict[str, Any]:
        return self.inner.summary()


def record_attributes(record: Record, group: str) -> dict[str, str | int]:
    """A record's span attributes at its fetch (the messaging semantic conventions)."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group,
    }
    if record.key is not None:
        with contextlib.suppress(UnicodeDecodeError):  # not a string: left out, as the conventions say
            attributes["messaging.kafka.message.key"] = record.key.decode()
    return attributes


def outcome_attributes(outcome: Outcome) -> dict[str, str]:
    """An acknowledged outcome's span attributes: which it was, the model, and for a dead letter why."""
    attributes = {"streamscore.request.id": outcome.request_id}
    model = model_of(outcome) if isinstance(outcome, Result) else outcome.model
    if model is not None:
        attributes["streamscore.model.name"], attributes["streamscore.model.version"] = model[0], model[1]
    if isinstance(outcome, Result):
        attributes["streamscore.outcome"] = "result"
        return attributes
    attributes["streamscore.outcome"] = "retry" if outcome.hop is not None else "dead_letter"
    attributes["streamscore.dead_letter.stage"] = stage_of(outcome.error)
    attributes["error.type"] = type(outcome.error).__name__
    if outcome.hop is not None:
        attributes["streamscore.retry.topic"] = outcome.hop.topic
    return attributes


def _key(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
