"""`FeatureProducer`: publish feature rows to Kafka as Open Inference Protocol (V2) requests.

Each record's value is a V2 request (JSON), its key is the request `id`, and its headers name the
model (and version) when one is configured. Sends are batched by the Kafka client (`linger_ms`);
each public `send_*` method returns once the broker has acknowledged every record it sent
(idempotent producer, `acks="all"`), or raises `ProduceError` naming the ids that were not.

    async with FeatureProducer("localhost:9092", "streamscore.requests", model="iris") as producer:
        ids = await producer.send_rows(features, rows_per_request=32)
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import headers as h
from schemas.codec import encode_request
from schemas.errors import ConfigError, ProduceError
from schemas.tensors import DATATYPES, Tensor, as_tensor
from transport.connection import Connection, start_client
from transport.seams import Producer

DEFAULT_INPUT_NAME = "x"
DEFAULT_LINGER_MS = 5
DEFAULT_MAX_IN_FLIGHT = 10_000
DEFAULT_MAX_BATCH_BYTES = 262_144  # well under the broker's default max.message.bytes (1 MiB)
_IDS_SHOWN = 10

HeaderInput = Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None
Headers = list[tuple[str, bytes]]


def make_ids(prefix: str, first_row: int, rows: int, rows_per_request: int) -> list[str]:
    """Request ids `<prefix>-<index of the request's first row>`, stable across runs."""
    return [f"{prefix}-{first_row + start}" for start in range(0, rows, rows_per_request)]


class FeatureProducer:
    """Publishes feature rows, arrays and ready V2 requests to one Kafka topic.

    `datatype` is the V2 datatype rows are sent as (None: follow the numpy dtype).
    `binary_outputs` asks for every output as binary data (Triton's `binary_data_output`, see
    `schemas.binary`) in the requests `send_rows` and `send_arrays` make. Connection
    options (`security_protocol`, `sasl_*`, `ssl_*`) are the fields of `transport.Connection`.
    Pass `producer=` a started client (or a fake) to reuse it; it is then neither started
    nor stopped here.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        model: str | None = None,
        model_version: str | None = None,
        input_name: str = DEFAULT_INPUT_NAME,
        datatype: str | None = None,
        binary_outputs: bool = False,
        id_prefix: str | None = None,
        linger_ms: int = DEFAULT_LINGER_MS,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        producer: Producer | None = None,
        **kafka_options: Any,
    ) -> None:
        if datatype is not None and datatype not in DATATYPES:
            raise ConfigError(f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.topic = topic
        self.input_name = input_name
        self.datatype = datatype
        self._parameters = {"binary_data_output": True} if binary_outputs else None
        self.id_prefix = id_prefix or uuid.uuid4().hex[:12]
        self.max_in_flight = max_in_flight
        self._model_headers = _model_headers(model, model_version)
        self._bootstrap_servers = bootstrap_servers
        self._client_options = {
            **Connection(bootstrap_servers=bootstrap_servers, **kafka_options).kafka_options(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_batch_size": DEFAULT_MAX_BATCH_BYTES,
            "client_id": "streamscore-producer",
        }
        self._producer = producer
        self._owns_producer = producer is None
        self._next_row = 0

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Connect to the broker (unless a client was passed in)."""
        if not self._owns_producer or self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._client_options)
        await start_client(producer, self._bootstrap_servers)
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending and disconnect (only a client this object started)."""
        if self._owns_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> FeatureProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -----------------------------------------------------------------------------------------
    # Sending

    async def send_rows(
        self,
        rows: np.ndarray[Any, Any] | Sequence[Sequence[float]],
        *,
        ids: Sequence[str] | None = None,
        rows_per_request: int = 1,
        headers: HeaderInput = None,
    ) -> list[str]:
        """Send `rows` (2-D) as requests of `rows_per_request` rows each; return their ids.

        `ids` gives one id per request; by default they are `<id_prefix>-<row offset>`, the
        offset counting the rows this producer has sent with `send_rows` and `send_arrays`.
        """
        array = self._as_rows(rows)
        if rows_per_request < 1:
            raise ConfigError(f"rows_per_request must be at least 1, got {rows_per_request}")
        request_ids = self._request_ids(ids, len(array), rows_per_request)
        record_headers = self._headers(headers)
        window = _Deliveries(self.max_in_flight)
        for number, request_id in enumerate(request_ids):
            batch = array[number * rows_per_request : (number + 1) * rows_per_request]
            value = encode_request([self._tensor(batch)], id=request_id, parameters=self._parameters)
            if not await self._enqueue(window, value, request_id, record_headers):
                break
        await window.drain(len(request_ids))
        return request_ids

    async def send_arrays(
        self,
        arrays: Mapping[str, Any],
        *,
        id: str | None = None,
        datatypes: Mapping[str, str] | None = None,
        headers: HeaderInput = None,
    ) -> str:
        """Send one request with several inputs (`{name: array}`); return its id.

        Each input's datatype is `datatypes[name]`, else follows its numpy dtype.
        """
        types = datatypes or {}
        tensors = [as_tensor(name, value, types.get(name)) for name, value in arrays.items()]
        if not tensors:
            raise ValueError("send_arrays needs at least one input")
        rows = int(tensors[0].data.shape[0]) if tensors[0].data.ndim else 1
        request_id = id if id is not None else self._generated_ids(rows, rows)[0]
        window = _Deliveries(self.max_in_flight)
        value = encode_request(tensors, id=request_id, parameters=self._parameters)
        await self._enqueue(window, value, request_id, self._headers(headers))
        await window.drain(1)
        return request_id

    async def send_request(
        self,
        request: bytes | Mapping[str, Any],
        *,
        key: str | None = None,
        headers: HeaderInput = None,
    ) -> str | None:
        """Send a ready V2 request unchanged; the key is `key`, else the body's `id`."""
        return (await self.send_requests([request], keys=[key], headers=headers))[0]

    async def send_requests(
        self,
        requests: Iterable[bytes | Mapping[str, Any]],
        *,
        keys: Sequence[str | None] | None = None,
        headers: HeaderInput = None,
    ) -> list[str | None]:
        """Send ready V2 requests unchanged, batched; return their keys (default: body `id`s)."""
        record_headers = self._headers(headers)
        window = _Deliveries(self.max_in_flight)
        sent: list[str | None] = []
        for number, request in enumerate(requests):
            given = keys[number] if keys is not None else None
            value, key = _request_value(request, given)
            sent.append(key)
            if not await self._enqueue(window, value, key, record_headers):
                break
        await window.drain(len(sent))
        return sent

    # -----------------------------------------------------------------------------------------
    # Helpers

    async def _enqueue(self, window: _Deliveries, value: bytes, key: str | None, headers: Headers) -> bool:
        """Hand one record to the client; False once a delivery failed (stop sending more)."""
        if window.failed:
            return False
        producer = self._started()
        encoded_key = key.encode() if key is not None else None
        try:
            future = await producer.send(self.topic, value=value, key=encoded_key, headers=headers)
        except KafkaError as error:
            window.fail(key, error)
            return False
        await window.add(key, future)
        return not window.failed

    def _started(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("FeatureProducer is not started: use `async with` or await start()")
        return self._producer

    def _as_rows(self, rows: np.ndarray[Any, Any] | Sequence[Sequence[float]]) -> Any:
        """The rows as a 2-D array, checked once before anything is sent."""
        array = np.asarray(rows)
        if array.ndim != 2:
            raise ValueError(f"rows must be 2-D (rows, features), got shape {array.shape}")
        target = DATATYPES[self.datatype] if self.datatype else array.dtype
        if target.kind in "iub" and array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
            raise ConfigError(
                f"rows hold fractional values that datatype {self.datatype} would truncate; send them as FP32 or FP64"
            )
        return array

    def _tensor(self, batch: np.ndarray[Any, Any]) -> Tensor:
        return as_tensor(self.input_name, batch, self.datatype)

    def _request_ids(self, ids: Sequence[str] | None, rows: int, rows_per_request: int) -> list[str]:
        expected = math.ceil(rows / rows_per_request)
        if ids is None:
            return self._generated_ids(rows, rows_per_request)
        if len(ids) != expected:
            raise ValueError(
                f"{rows} rows at {rows_per_request} per request make {expected} requests, but {len(ids)} ids were given"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        self._next_row += rows
        return list(ids)

    def _generated_ids(self, rows: int, rows_per_request: int) -> list[str]:
        ids = make_ids(self.id_prefix, self._next_row, rows, rows_per_request)
        self._next_row += rows
        return ids

    def _headers(self, extra: HeaderInput) -> Headers:
        if extra is None:
            return list(self._model_headers)
        pairs = extra.items() if isinstance(extra, Mapping) else extra
        encoded = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
        return [*self._model_headers, *encoded]


def _model_headers(model: str | None, model_version: str | None) -> Headers:
    found: Headers = []
    if model:
        found.append((h.MODEL, model.encode()))
    if model_version:
        found.append((h.MODEL_VERSION, model_version.encode()))
    return found


def _request_value(request: bytes | Mapping[str, Any], key: str | None) -> tuple[bytes, str | None]:
    """The record value of a ready request, and its key (`key`, else the body's `id`)."""
    if isinstance(request, Mapping):
        body: Any = request
        value = orjson.dumps(dict(request), option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        value = bytes(request)
        body = orjson.loads(value) if key is None else None
    if key is None and isinstance(body, Mapping) and isinstance(body.get("id"), str):
        key = body["id"]
    return value, key


class _Deliveries:
    """Delivery futures in flight, at most `limit`: adding past it awaits the oldest first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: deque[tuple[str | None, asyncio.Future[Any]]] = deque()
        self.acknowledged = 0
        self.failed: list[tuple[str | None, BaseException]] = []

    async def add(self, key: str | None, future: asyncio.Future[Any]) -> None:
        self._pending.append((key, future))
        while len(self._pending) > self._limit:
            await self._settle_oldest()

    def fail(self, key: str | None, error: BaseException) -> None:
        self.failed.append((key, error))

    async def drain(self, planned: int) -> None:
        """Wait for every pending delivery; raise ProduceError if any was not acknowledged."""
        while self._pending:
            await self._settle_oldest()
        if self.failed:
            raise ProduceError(self._failure_message(planned))

    async def _settle_oldest(self) -> None:
        key, future = self._pending.popleft()
        try:
            await future
        except Exception as error:  # any delivery failure is reported with its id
            self.fail(key, error)
        else:
            self.acknowledged += 1

    def _failure_message(self, planned: int) -> str:
        ids = [str(key) for key, _ in self.failed[:_IDS_SHOWN]]
        more = len(self.failed) - len(ids)
        unsent = planned - self.acknowledged - len(self.failed)
        return (
            f"{len(self.failed)} of {planned} records were not acknowledged by the broker "
            f"(ids {', '.join(ids)}{f' and {more} more' if more else ''}; "
            f"first error: {self.failed[0][1]!r})"
            + (f"; {unsent} later records were not sent" if unsent > 0 else "")
            + "; ids are stable, so send those again once the broker is healthy"
        )
