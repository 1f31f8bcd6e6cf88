"""Where Kafka is and how to talk to it: bootstrap servers, TLS and SASL, in one frozen object."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from schemas.config import setting_name
from schemas.errors import BrokerUnavailableError, ConfigError
from transport.seams import Client

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# What a producer promises: each record acknowledged (acks=all, idempotent), or its records in transactions
AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"
GUARANTEES = (AT_LEAST_ONCE, EXACTLY_ONCE)


@dataclass(frozen=True)
class Connection:
    """The connection settings every client of streamscore shares (settings classes extend it)."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # from the environment, never a flag
    sasl_password_file: str = ""  # a file holding the password (wins over sasl_password)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"{setting_name('security_protocol')} must be PLAINTEXT, SSL, SASL_PLAINTEXT or "
                f"SASL_SSL, got {self.security_protocol!r}"
            )

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for this connection: bootstrap, TLS and SASL."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile or None)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
            options["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism:
                raise ConfigError(
                    f"{setting_name('sasl_mechanism')} is required with {self.security_protocol}: "
                    "set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                )
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.password()
        return options

    def password(self) -> str:
        """The SASL password: the first line of `sasl_password_file` if set, else `sasl_password`."""
        if not self.sasl_password_file:
            return self.sasl_password
        try:
            lines = Path(self.sasl_password_file).read_text().splitlines()
        except OSError as error:
            raise ConfigError(
                f"{setting_name('sasl_password_file')}={self.sasl_password_file!r} cannot be read: {error.strerror}"
            ) from None
        return lines[0] if lines else ""

    @property
    def connection(self) -> Connection:
        """Only the connection fields (of a settings object that extends this class)."""
        return Connection(**{name: getattr(self, name) for name in CONNECTION_FIELDS})


CONNECTION_FIELDS = tuple(item.name for item in dataclasses.fields(Connection))


async def start_client(client: Client, bootstrap_servers: str) -> None:
    """Start a client once; if the broker cannot be reached, stop it and raise BrokerUnavailableError."""
    try:
        await client.start()
    except KafkaError as error:
        with contextlib.suppress(Exception):
            await client.stop()
        raise BrokerUnavailableError(
            f"cannot reach the Kafka broker at {bootstrap_servers} ({error}); "
            "check the bootstrap address and that the broker is running"
        ) from error
