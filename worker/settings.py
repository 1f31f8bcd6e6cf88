"""Settings: one frozen object, read once at the edge from `STREAMSCORE_*` variables and flags.

Every field of `Settings` is a setting: its environment variable is `STREAMSCORE_` plus the
field name in upper case (`max_batch_rows` -> `STREAMSCORE_MAX_BATCH_ROWS`), its flag is the
field name with dashes (`--max-batch-rows`). Flags win over the environment, the environment
over the defaults below. No other module reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

ENV_PREFIX = "STREAMSCORE_"

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_INPUT_TOPIC = "streamscore.requests"
DEFAULT_RESULTS_TOPIC = "streamscore.results"
DEFAULT_GROUP_ID = "streamscore"
DEFAULT_CONTROL_TOPIC = "streamscore.control"
DEFAULT_MODEL_ROOT = "models"
DEFAULT_MAX_BATCH_ROWS = 256
DEFAULT_MAX_BATCH_DELAY_MS = 5.0
DEFAULT_MAX_IN_FLIGHT = 2000
DEFAULT_MAX_RECORD_BYTES = 1_048_576
DEFAULT_MAX_REQUEST_ROWS = 4096
DEFAULT_COMMIT_INTERVAL_MS = 500.0
DEFAULT_SHUTDOWN_GRACE_S = 30.0
DEFAULT_REQUEST_TIMEOUT_MS = 30_000
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_RETRY_ATTEMPTS = 5
DEFAULT_RETRY_MAX_S = 30.0
DEFAULT_CORRELATION_HEADERS = ("traceparent", "tracestate", "baggage", "correlation-id", "x-request-id")


@dataclass(frozen=True)
class Settings:
    """Everything a worker process needs to know; built by `from_sources`, then passed along."""

    # Kafka connection
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    # Topics and group
    input_topic: str = DEFAULT_INPUT_TOPIC
    results_topic: str = DEFAULT_RESULTS_TOPIC
    dead_letter_topic: str = ""  # empty: "<input_topic>.DLT", as Spring Kafka's plain recoverer
    group_id: str = DEFAULT_GROUP_ID
    control_topic: str = DEFAULT_CONTROL_TOPIC  # desired model versions (compacted); empty: none
    shadow_topic: str = ""  # empty: "<results_topic>.shadow"
    # Model
    model_root: str = DEFAULT_MODEL_ROOT
    model_name: str = ""  # the default model; empty: the only model under model_root
    model_version: str = ""  # pin a version of the default model; empty: the highest
    intra_op_threads: int = 1
    # Batching and flow control
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    max_batch_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    commit_interval_ms: float = DEFAULT_COMMIT_INTERVAL_MS
    # Input limits
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS
    allow_nonfinite: bool = False
    correlation_headers: tuple[str, ...] = DEFAULT_CORRELATION_HEADERS
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS  # one Kafka request, metadata included
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS  # a silent worker leaves the group after this
    # Retries of transient failures
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    # Process model
    processes: int = 1
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    burst: bool = False  # exit once every assigned partition is drained (tests, batch jobs)
    worker_id: str = ""  # empty: "<hostname>-<pid>"
    # Logs
    log_format: str = "auto"  # auto (console on a terminal, else json), json, console
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in (
            "max_batch_rows",
            "max_in_flight",
            "max_record_bytes",
            "max_request_rows",
            "retry_attempts",
            "processes",
            "intra_op_threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{setting_name(name)} must be at least 1, got {getattr(self, name)}")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError(
                f"{setting_name('security_protocol')} must be PLAINTEXT, SSL, SASL_PLAINTEXT or "
                f"SASL_SSL, got {self.security_protocol!r}"
            )
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"{setting_name('log_format')} must be auto, json or console")

    @property
    def dead_letter_topic_name(self) -> str:
        """The dead-letter topic: the setting, or `<input_topic>.DLT`."""
        return self.dead_letter_topic or f"{self.input_topic}.DLT"

    @property
    def shadow_topic_name(self) -> str:
        """Where shadow versions' results go: the setting, or `<results_topic>.shadow`."""
        return self.shadow_topic or f"{self.results_topic}.shadow"

    @property
    def worker_name(self) -> str:
        """This process's name in logs and dead-letter headers."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (settings are frozen)."""
        return dataclasses.replace(self, **changes)

    def kafka_options(self) -> dict[str, Any]:
        """Connection options shared by every aiokafka client of this worker."""
        return kafka_options(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password,
            ssl_cafile=self.ssl_cafile,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )

    @property
    def model_root_path(self) -> Path:
        return Path(self.model_root)


def kafka_options(
    *,
    bootstrap_servers: str,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str = "",
    sasl_username: str = "",
    sasl_password: str = "",
    ssl_cafile: str = "",
    ssl_certfile: str = "",
    ssl_keyfile: str = "",
) -> dict[str, Any]:
    """aiokafka keyword arguments for a connection: bootstrap, TLS and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": security_protocol,
    }
    if security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=ssl_cafile or None)
        if ssl_certfile:
            context.load_cert_chain(ssl_certfile, ssl_keyfile or None)
        options["ssl_context"] = context
    if security_protocol.startswith("SASL"):
        if not sasl_mechanism:
            raise ConfigError(
                f"{setting_name('sasl_mechanism')} is required with {security_protocol}: "
                "set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        options["sasl_mechanism"] = sasl_mechanism
        options["sasl_plain_username"] = sasl_username
        options["sasl_plain_password"] = sasl_password
    return options


def setting_name(field_name: str) -> str:
    """The environment variable of a settings field."""
    return ENV_PREFIX + field_name.upper()


def parse_value(name: str, raw: str, default: Any) -> Any:
    """Turn the text of a setting into the type of its default, or say what is wrong."""
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{setting_name(name)}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def from_sources(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment, then flag values (already parsed) on top."""
    values: dict[str, Any] = {}
    for item in fields(Settings):
        default = Settings.__dataclass_fields__[item.name].default
        raw = environ.get(setting_name(item.name))
        if raw is not None:
            values[item.name] = parse_value(item.name, raw, default)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values)


def setting_names() -> list[str]:
    """Every environment variable the worker reads (the README and compose are checked against it)."""
    return [setting_name(item.name) for item in fields(Settings)]
