"""The worker's settings: one frozen object, read once at the edge from `STREAMSCORE_*` variables and flags.

Every field of `Settings` is a setting (`schemas.config` names them): its environment variable is
`STREAMSCORE_` plus the field name in upper case (`max_batch_rows` -> `STREAMSCORE_MAX_BATCH_ROWS`),
its flag the field name with dashes (`--max-batch-rows`). Flags win over the environment, the
environment over the defaults below. The connection fields come from `transport.Connection`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.cache import DEFAULT_CACHE
from artifacts.manifest import DEFAULT_MAX_BATCH_ROWS as DEFAULT_MAX_BATCH_ROWS
from artifacts.registry import DEFAULT_MODEL_ROOT
from schemas import config
from schemas.config import setting_name as setting_name
from schemas.errors import ConfigError
from schemas.topics import (
    DEFAULT_CONTROL_TOPIC,
    DEFAULT_GROUP_ID,
    DEFAULT_INPUT_TOPIC,
    DEFAULT_RESULTS_TOPIC,
    dead_letter_topic_of,
    retry_topic_of,
    shadow_topic_of,
    status_topic_of,
)
from transport.connection import AT_LEAST_ONCE, EXACTLY_ONCE, GUARANTEES, Connection

DEFAULT_MAX_BATCH_DELAY_MS = 5.0
DEFAULT_MAX_IN_FLIGHT = 2000
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RECORD_BYTES = 1_048_576
DEFAULT_MAX_REQUEST_ROWS = 4096
DEFAULT_COMMIT_INTERVAL_MS = 500.0
DEFAULT_SHUTDOWN_GRACE_S = 30.0
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_RETRY_ATTEMPTS = 5
DEFAULT_RETRY_MAX_S = 30.0
DEFAULT_INFERENCE_TIMEOUT_S = 60.0
DEFAULT_COMPRESSION = "zstd"  # chosen by `python -m bench.compression`: smallest, no slower (bench/README.md)
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
GROUP, SHARE = "group", "share"
DEFAULT_SHARE_MAX_RECORDS = 64
DEFAULT_CORRELATION_HEADERS = ("traceparent", "tracestate", "baggage", "correlation-id", "x-request-id")


@dataclass(frozen=True)
class Settings(Connection):
    """Everything a worker process needs to know; built by `schemas.config.from_sources`, then passed along."""

    # Kafka connection: the fields of transport.Connection come first
    # Topics and group
    input_topic: str = DEFAULT_INPUT_TOPIC
    results_topic: str = DEFAULT_RESULTS_TOPIC
    dead_letter_topic: str = ""  # empty: "<input_topic>.DLT", as Spring Kafka's plain recoverer
    group_id: str = DEFAULT_GROUP_ID
    control_topic: str = DEFAULT_CONTROL_TOPIC  # desired model versions (compacted); empty: none
    shadow_topic: str = ""  # empty: "<results_topic>.shadow"
    # Model
    model_root: str = DEFAULT_MODEL_ROOT  # a folder, or s3://bucket/prefix (the `s3` extra)
    model_cache: str = ""  # s3:// roots: versions' files kept here by sha256; empty: ~/.cache/streamscore/models
    model_name: str = ""  # the default model; empty: the only model under model_root
    model_version: str = ""  # pin a version of the default model; empty: the highest
    intra_op_threads: int = 1
    execution_providers: tuple[str, ...] = ("cpu",)  # onnxruntime's, in order of preference: cpu, cuda, tensorrt, ...
    inference_timeout_s: float = DEFAULT_INFERENCE_TIMEOUT_S  # one model run; a record over it is dead-lettered
    # Batching and flow control
    max_batch_rows: int = 0  # 0: the version's tuned value (`streamscore model tune`), else DEFAULT_MAX_BATCH_ROWS
    max_batch_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES  # record bytes between fetch and acknowledgement
    commit_interval_ms: float = DEFAULT_COMMIT_INTERVAL_MS
    # Input limits
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS
    allow_nonfinite: bool = False
    correlation_headers: tuple[str, ...] = DEFAULT_CORRELATION_HEADERS
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS  # one Kafka request, metadata included
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS  # a silent worker leaves the group after this
    guarantee: str = AT_LEAST_ONCE  # or exactly-once: results, dead letters and offsets in one transaction
    transactional_id_prefix: str = ""  # exactly-once: <prefix>-<topic>-<partition>; empty: the group id
    compression: str = DEFAULT_COMPRESSION  # of results and dead letters: none, gzip, snappy, lz4, zstd
    # How records are consumed: "group" (a consumer group: each partition to one worker, ordered) or
    # "share" (a share group, KIP-932: any number of workers share each partition; worker/sharing.py)
    consumption: str = GROUP
    share_max_records: int = DEFAULT_SHARE_MAX_RECORDS  # share: records acquired per poll (all held under one lock)
    # Retry topics: records that may succeed later (worker/retrytopics.py); no delays: none
    retry_topic_delays_ms: tuple[str, ...] = ()  # e.g. 1000,10000,60000: topics <input>-retry-<delay>
    retry_topic_attempts: int = 0  # every attempt, the first included; 0: one per delay, plus the first
    # Connecting at start (a broker that fails later is waited for, never given up on)
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    # Process model
    processes: int = 1
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    burst: bool = False  # exit once every assigned partition is drained (tests, batch jobs)
    worker_id: str = ""  # empty: "<hostname>-<pid>"
    metrics_port: int = 0  # /metrics, /healthz, /readyz on this port (one for all processes); 0: off
    # Logs
    log_format: str = "auto"  # auto (console on a terminal, else json), json, console
    log_level: str = "info"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch_rows < 0:
            raise ConfigError(f"{setting_name('max_batch_rows')} must be 0 (the model's tuned value) or more rows")
        for name in (
            "max_in_flight",
            "max_in_flight_bytes",
            "max_record_bytes",
            "max_request_rows",
            "retry_attempts",
            "processes",
            "intra_op_threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{setting_name(name)} must be at least 1, got {getattr(self, name)}")
        if self.guarantee not in GUARANTEES:
            raise ConfigError(
                f"{setting_name('guarantee')} must be at-least-once or exactly-once, not {self.guarantee!r}"
            )
        self._check_retry_topics()
        self._check_consumption()
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"{setting_name('metrics_port')} must be 0 (off) or a TCP port, got {self.metrics_port}")
        if self.inference_timeout_s < 0:
            raise ConfigError(f"{setting_name('inference_timeout_s')} must be 0 (none) or more seconds")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"{setting_name('compression')} must be one of {', '.join(COMPRESSIONS)}")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"{setting_name('log_format')} must be auto, json or console")

    def _check_retry_topics(self) -> None:
        name = setting_name("retry_topic_delays_ms")
        if not all(delay.isdigit() and int(delay) > 0 for delay in self.retry_topic_delays_ms):
            raise ConfigError(
                f"{name} must be positive whole milliseconds, comma-separated, not {self.retry_topic_delays_ms}"
            )
        if len(set(self.retry_topic_delays_ms)) != len(self.retry_topic_delays_ms):
            raise ConfigError(f"{name} names a delay twice ({self.retry_topic_delays_ms}): each delay is one topic")
        attempts = self.retry_topic_attempts
        if attempts < 0 or (self.retry_topic_delays_ms and 0 < attempts < 2):
            raise ConfigError(
                f"{setting_name('retry_topic_attempts')} must be 0 (one per delay) or at least 2, got {attempts}"
            )

    def _check_consumption(self) -> None:
        name = setting_name("consumption")
        if self.consumption not in (GROUP, SHARE):
            raise ConfigError(f"{name} must be group or share, not {self.consumption!r}")
        if self.consumption != SHARE:
            return
        if self.exactly_once:
            raise ConfigError(
                f"{name}=share is at least once: a share group cannot commit in a transaction; "
                f"unset {setting_name('guarantee')} or consume as a group"
            )
        if self.retry_topic_delays_ms:
            raise ConfigError(
                f"{name}=share retries by redelivery (the broker counts each record's deliveries); "
                f"unset {setting_name('retry_topic_delays_ms')}"
            )
        if self.share_max_records < 1:
            raise ConfigError(f"{setting_name('share_max_records')} must be at least 1, got {self.share_max_records}")

    @property
    def shared(self) -> bool:
        """Whether the worker consumes through a share group (worker/sharing.py)."""
        return self.consumption == SHARE

    @property
    def retry_delays_ms(self) -> tuple[int, ...]:
        """The delay of each retry topic, in the order a record goes through them (empty: no retry topics)."""
        return tuple(int(delay) for delay in self.retry_topic_delays_ms)

    @property
    def input_topics(self) -> list[str]:
        """What the worker consumes: the input topic, then its retry topics."""
        return [self.input_topic, *(retry_topic_of(self.input_topic, d) for d in self.retry_delays_ms)]

    @property
    def dead_letter_topic_name(self) -> str:
        """The dead-letter topic: the setting, or `<input_topic>.DLT`."""
        return self.dead_letter_topic or dead_letter_topic_of(self.input_topic)

    @property
    def shadow_topic_name(self) -> str:
        """Where shadow versions' results go: the setting, or `<results_topic>.shadow`."""
        return self.shadow_topic or shadow_topic_of(self.results_topic)

    @property
    def exactly_once(self) -> bool:
        """Whether results, dead letters and input offsets go out in transactions."""
        return self.guarantee == EXACTLY_ONCE

    def transactional_id(self, topic: str, partition: int) -> str:
        """The transactional id of the producer of one input partition (the same on every worker)."""
        return f"{self.transactional_id_prefix or self.group_id}-{topic}-{partition}"

    @property
    def transaction_timeout_ms(self) -> int:
        """Below the session timeout: the broker aborts a stalled worker's transaction before its
        partitions can move to another one."""
        return max(1000, self.session_timeout_ms - 1000)

    @property
    def status_topic_name(self) -> str:
        """Where this worker reports what it serves: `<control_topic>.status`."""
        return status_topic_of(self.control_topic)

    @property
    def worker_name(self) -> str:
        """This process's name in logs and dead-letter headers."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (settings are frozen)."""
        return dataclasses.replace(self, **changes)

    @property
    def model_cache_path(self) -> Path:
        """Where files read from an object store are kept (`model_cache`, else DEFAULT_CACHE)."""
        return Path(self.model_cache).expanduser() if self.model_cache else DEFAULT_CACHE.expanduser()


def batch_rows(setting: int, tuned: int | None) -> tuple[int, str]:
    """Rows per batch for a model version, and where the number comes from: the setting when given (not 0),
    else the version's tuned value, else DEFAULT_MAX_BATCH_ROWS."""
    if setting:
        return setting, "setting"
    if tuned:
        return tuned, "tuned"
    return DEFAULT_MAX_BATCH_ROWS, "default"


def from_sources(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """The worker's settings from the environment, then flag values (already parsed) on top."""
    return config.from_sources(Settings, environ, overrides)


def setting_names() -> list[str]:
    """Every environment variable the worker reads (the README and compose are checked against it)."""
    return config.setting_names(Settings)
