"""What a local Kafka broker is configured with, and the server.properties that follow (pure).

Besides PLAINTEXT (which stays the inter-broker listener, beside the KRaft CONTROLLER one), a
broker can listen with authentication and encryption on extra ports: SASL_PLAINTEXT and SASL_SSL
(mechanisms PLAIN and SCRAM-SHA-256, for the `users` of the config), SSL (server certificate
only) and MTLS (SSL that requires a client certificate signed by `ssl_truststore`). Certificates
are PEM files. SCRAM credentials live in the cluster metadata, so they are written when the
storage is formatted: users added to an already formatted folder can use PLAIN only.

With `authorizer=True` the broker checks ACLs (KRaft's StandardAuthorizer) and user `admin` is
the only super user. The broker and its controller then talk to each other over SASL PLAIN as
`admin` (the CONTROLLER listener and the inter-broker SASL_PLAINTEXT one), not over PLAINTEXT: a
PLAINTEXT connection's principal is User:ANONYMOUS, and super.users names principals, not
listeners, so making ANONYMOUS a super user for the internal traffic would make every client of
the PLAINTEXT port one too. So PLAINTEXT clients stay ANONYMOUS with no ACL: they may read the
cluster's metadata (brokers, no topics) and nothing else; everything else goes over SASL.

Running the broker (jars, format, start, stop) is in `broker/local.py`.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import LocalBrokerError

DEFAULT_HOME = Path(".kafka")
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_SASL_PORT = 9094  # `broker start --acls`: the SASL_PLAINTEXT listener clients authenticate on
USERS_FILE = "users.properties"  # `broker start --acls`: in --dir unless --users names another
ACL_USERS = ("admin", "worker", "producer")  # the users a new users file holds
SUPER_USER = "admin"  # with the authorizer on: the one super user, also the broker's own principal
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256")
# Characters that would break the JAAS line or the `--add-scram` argument they are written into.
_UNSAFE_CREDENTIAL = re.compile(r'[\s"\\,=\[\];]')


@dataclass(frozen=True)
class BrokerConfig:
    """Where a local broker keeps its files and which ports it listens on."""

    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    libs: Path | None = None  # the jars cache; None: `<home>/libs`
    # Optional listeners (None: not opened) and what they need.
    sasl_port: int | None = None  # SASL_PLAINTEXT, mechanisms PLAIN and SCRAM-SHA-256
    ssl_port: int | None = None  # SSL, server certificate only
    mtls_port: int | None = None  # SSL with a required client certificate
    sasl_ssl_port: int | None = None  # SASL_SSL, mechanisms PLAIN and SCRAM-SHA-256
    users: dict[str, str] = field(default_factory=dict, repr=False, hash=False)  # SASL name -> password
    ssl_keystore: Path | None = None  # PEM: unencrypted PKCS#8 key, then the certificate chain
    ssl_truststore: Path | None = None  # PEM: the CAs that sign client certificates (MTLS)
    # A node of a cluster (broker/cluster.py): its id, and the controller ports of every node, by id.
    node_id: int = 1
    quorum: tuple[int, ...] = ()  # empty: this node alone is the cluster
    # ACLs checked (StandardAuthorizer); needs sasl_port and a user "admin", the super user.
    authorizer: bool = False

    def __post_init__(self) -> None:
        if self.authorizer and (self.sasl_port is None or SUPER_USER not in self.users):
            raise LocalBrokerError(
                f"the authorizer needs the SASL_PLAINTEXT listener (sasl_port) and a user {SUPER_USER!r}, "
                "the super user the broker and controller also authenticate as"
            )
        if self.sasl_port is not None or self.sasl_ssl_port is not None:
            if not self.users:
                raise LocalBrokerError("a SASL listener needs at least one user")
            unsafe = [name for name, password in self.users.items() if not _safe_credential(name, password)]
            if unsafe:
                raise LocalBrokerError(f'user names and passwords must not hold spaces or ",=[];\\: {unsafe}')
        tls_ports = (self.ssl_port, self.mtls_port, self.sasl_ssl_port)
        if self.ssl_keystore is None and any(port is not None for port in tls_ports):
            raise LocalBrokerError("an SSL listener needs ssl_keystore (PEM key and certificate chain)")
        if self.mtls_port is not None and self.ssl_truststore is None:
            raise LocalBrokerError("the MTLS listener needs ssl_truststore (PEM CA of client certificates)")

    @property
    def address(self) -> str:
        """The bootstrap address clients use."""
        return f"127.0.0.1:{self.port}"

    @property
    def listeners(self) -> dict[str, int]:
        """The client listeners by name (PLAINTEXT first, then the optional ones that are set)."""
        optional = {
            "SASL_PLAINTEXT": self.sasl_port,
            "SSL": self.ssl_port,
            "MTLS": self.mtls_port,
            "SASL_SSL": self.sasl_ssl_port,
        }
        return {"PLAINTEXT": self.port, **{name: port for name, port in optional.items() if port is not None}}

    def address_of(self, listener: str) -> str:
        """The bootstrap address of one listener (`"SASL_PLAINTEXT"`, `"SSL"`, `"MTLS"`, ...)."""
        try:
            return f"127.0.0.1:{self.listeners[listener]}"
        except KeyError:
            raise LocalBrokerError(f"this broker has no {listener} listener") from None

    @property
    def voters(self) -> tuple[int, ...]:
        """The controller ports of the cluster's nodes, node 1 first."""
        return self.quorum or (self.controller_port,)

    @property
    def libs_dir(self) -> Path:
        return (self.libs or self.home / "libs").absolute()

    @property
    def data_dir(self) -> Path:
        return (self.home / "data").absolute()

    @property
    def log_dir(self) -> Path:
        return (self.home / "logs").absolute()

    @property
    def properties_file(self) -> Path:
        return (self.home / "server.properties").absolute()

    @property
    def pid_file(self) -> Path:
        return (self.home / "broker.pid").absolute()


@dataclass(frozen=True)
class BrokerStatus:
    """What `status` found: whether the broker process runs, its pid and address."""

    running: bool
    pid: int | None
    address: str


DEFAULT_CONFIG = BrokerConfig()


def server_properties(config: BrokerConfig) -> dict[str, str]:
    """The server.properties of a KRaft broker+controller node (alone, or one of a cluster), tuned for tests.

    In a cluster of three or more, every topic gets three replicas and needs two in sync
    (`min.insync.replicas=2`), the internal topics too; alone, one of each.
    """
    listeners = config.listeners
    controller = "SASL_PLAINTEXT" if config.authorizer else "PLAINTEXT"
    protocols = {"CONTROLLER": controller, **{name: _PROTOCOLS[name] for name in listeners}}
    advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
    voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in enumerate(config.voters, start=1))
    return {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"{advertised},CONTROLLER://127.0.0.1:{config.controller_port}",
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(f"{name}:{protocol}" for name, protocol in protocols.items()),
        "inter.broker.listener.name": "SASL_PLAINTEXT" if config.authorizer else "PLAINTEXT",
        **security_properties(config),
        **authorizer_properties(config),
        "log.dirs": str(config.data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        **replication_properties(len(config.voters)),
        # Few partitions of the internal topics, so that the first consumer group or
        # transaction does not wait for 50 partitions to be created.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        # Tests: no rebalance delay, and short session timeouts allowed.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        # Share groups (KIP-932, on by default since Kafka 4.2): a group may set an acquisition lock
        # as short as a second, so that a test sees a killed worker's records redelivered quickly.
        "group.share.min.record.lock.duration.ms": "1000",
    }


def replication_properties(nodes: int) -> dict[str, str]:
    """Replicas and in-sync replicas of every topic, by the cluster's size (three replicas at most)."""
    replicas, in_sync = str(min(3, nodes)), str(2 if nodes >= 3 else 1)
    return {
        "default.replication.factor": replicas,
        "min.insync.replicas": in_sync,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
    }


_PROTOCOLS = {
    "PLAINTEXT": "PLAINTEXT",
    "SASL_PLAINTEXT": "SASL_PLAINTEXT",
    "SSL": "SSL",
    "MTLS": "SSL",
    "SASL_SSL": "SASL_SSL",
}


def security_properties(config: BrokerConfig) -> dict[str, str]:
    """The SASL and TLS settings of the optional listeners (none when none is configured)."""
    properties: dict[str, str] = {}
    listeners = config.listeners
    for name in ("SASL_PLAINTEXT", "SASL_SSL"):
        if name in listeners:
            properties.update(_sasl_properties(name.lower(), config.users))
    if config.ssl_keystore is not None and {"SSL", "MTLS", "SASL_SSL"} & listeners.keys():
        properties.update(
            {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(config.ssl_keystore.absolute()),
                "ssl.client.auth": "none",
            }
        )
    if config.ssl_truststore is not None and "MTLS" in listeners:
        properties.update(
            {
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(config.ssl_truststore.absolute()),
                "listener.name.mtls.ssl.client.auth": "required",
            }
        )
    return properties


def authorizer_properties(config: BrokerConfig) -> dict[str, str]:
    """ACLs checked, `admin` the super user, and the node's own traffic over SASL PLAIN as `admin`.

    The CONTROLLER listener (broker to controller, in one process here) and the inter-broker
    SASL_PLAINTEXT listener authenticate as `admin`; its credentials sit in each listener's JAAS
    line twice: `username`/`password` for the node as a client, `user_admin` for it as a server.
    """
    if not config.authorizer:
        return {}
    password = config.users[SUPER_USER]
    client_side = f'username="{SUPER_USER}" password="{password}"'
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule required"
    server_side = " ".join(f'user_{name}="{secret}"' for name, secret in config.users.items())
    return {
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "super.users": f"User:{SUPER_USER}",
        "allow.everyone.if.no.acl.found": "false",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": f"{plain} {client_side} {server_side};",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": f'{plain} {client_side} user_{SUPER_USER}="{password}";',
    }


def _sasl_properties(listener: str, users: dict[str, str]) -> dict[str, str]:
    """PLAIN checks passwords against the JAAS line; SCRAM against credentials in the metadata."""
    plain_users = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    prefix = f"listener.name.{listener}"
    return {
        f"{prefix}.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        f"{prefix}.plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        f"{prefix}.scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    }


def scram_arguments(config: BrokerConfig) -> list[str]:
    """`kafka-storage format` arguments that create a SCRAM-SHA-256 credential per SASL user."""
    if config.sasl_port is None and config.sasl_ssl_port is None:
        return []
    return [
        argument
        for name, password in config.users.items()
        for argument in ("--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]")
    ]


def _safe_credential(name: str, password: str) -> bool:
    return bool(name and password) and not _UNSAFE_CREDENTIAL.search(name + password)


def parse_users(text: str, source: str) -> dict[str, str]:
    """The users of a users file: `name=password` a line; blank lines and `#` comments skipped."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, password = line.partition("=")
        if not equals or not name.strip() or not password.strip():
            raise LocalBrokerError(f"{source} line {number}: expected `name=password`, got {line!r}")
        users[name.strip()] = password.strip()
    return users


def render_properties(properties: dict[str, str]) -> str:
    """The text of a .properties file, one `key=value` a line."""
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding, never starting with "-" (the
    storage tool would read it as an option: `argument --cluster-id/-t: expected one argument`, one
    format in 64; Kafka's own Uuid.randomUuid draws again for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id
