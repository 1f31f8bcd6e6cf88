"""A local single-node Apache Kafka broker (KRaft mode) on 127.0.0.1, run by Python.

The broker's jars come from Maven Central (`broker/pom.xml`) once, into a cache folder; the
broker runs as a detached `java` process with its own session, so it outlives the command that
started it. Everything lives under one folder (default `.kafka/`, git-ignored):

    .kafka/libs/                the jars (shared; the test fixture points its brokers here)
    .kafka/data/                the log dirs, formatted on first start
    .kafka/logs/server.log      the broker's log (log4j2, `broker/log4j2.properties`)
    .kafka/logs/console.log     the JVM's stdout and stderr
    .kafka/server.properties    written on every start
    .kafka/broker.pid           present while the broker runs

Besides PLAINTEXT (which stays the inter-broker listener, beside the KRaft CONTROLLER one), a
broker can listen with authentication and encryption on extra ports: SASL_PLAINTEXT and SASL_SSL
(mechanisms PLAIN and SCRAM-SHA-256, for the `users` of the config), SSL (server certificate
only) and MTLS (SSL that requires a client certificate signed by `ssl_truststore`). Certificates
are PEM files. SCRAM credentials live in the cluster metadata, so they are written when the
storage is formatted: users added to an already formatted folder can use PLAIN only.

Errors are in `broker/errors.py`; creating topics is in `broker/topics.py`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from broker.errors import LocalBrokerError, ToolMissingError

DEFAULT_HOME = Path(".kafka")
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_START_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 30.0
JAVA_MIN_VERSION = 17
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true")
POM = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
INSTALL_HINT = "install them, e.g. `apt-get install openjdk-17-jre-headless maven`"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256")
# Characters that would break the JAAS line or the `--add-scram` argument they are written into.
_UNSAFE_CREDENTIAL = re.compile(r'[\s"\\,=\[\];]')

Progress = Callable[[str], None]


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

    def __post_init__(self) -> None:
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


# --- deciding: pure -----------------------------------------------------------------------


def server_properties(config: BrokerConfig) -> dict[str, str]:
    """The server.properties of a single-node KRaft broker+controller, tuned for tests."""
    listeners = config.listeners
    protocols = {"CONTROLLER": "PLAINTEXT", **{name: _PROTOCOLS[name] for name in listeners}}
    advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{config.controller_port}",
        "listeners": f"{advertised},CONTROLLER://127.0.0.1:{config.controller_port}",
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(f"{name}:{protocol}" for name, protocol in protocols.items()),
        "inter.broker.listener.name": "PLAINTEXT",
        **security_properties(config),
        "log.dirs": str(config.data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        # One node: every internal topic has one replica, and few partitions so that the
        # first consumer group or transaction does not wait for 50 partitions to be created.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        # Tests: no rebalance delay, and short session timeouts allowed.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
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


def render_properties(properties: dict[str, str]) -> str:
    """The text of a .properties file, one `key=value` a line."""
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def java_major_version(version_output: str) -> int:
    """The major version in `java -version` output (`"17.0.15"` -> 17, `"1.8.0"` -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def java_command(config: BrokerConfig, main_class: str, *args: str) -> list[str]:
    """The `java` command line running a Kafka main class on the cached jars."""
    return [
        "java",
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={config.log_dir}",
        "-cp",
        f"{config.libs_dir}/*",
        main_class,
        *args,
    ]


# --- acting: processes and files --------------------------------------------------------------

# Brokers started by this process: kept so they can be reaped (a dead child stays a zombie,
# which `kill(pid, 0)` still sees) and so Popen does not warn that they outlive it.
_children: dict[int, subprocess.Popen[bytes]] = {}


def ensure_tools(*, need_mvn: bool) -> None:
    """Check that java 17+ (and mvn, to fetch the jars) are installed, or say how to get them."""
    needed = ("java", "mvn") if need_mvn else ("java",)
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise ToolMissingError(f"the local Kafka broker needs {' and '.join(missing)} on PATH: {INSTALL_HINT}")
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    major = java_major_version(result.stderr + result.stdout)
    if major < JAVA_MIN_VERSION:
        raise ToolMissingError(
            f"Kafka 4 needs Java {JAVA_MIN_VERSION}+, found {major or 'an unknown version'}: {INSTALL_HINT}"
        )


def jars_ready(config: BrokerConfig) -> bool:
    """Whether the jars cache holds the dependencies of the current pom."""
    marker = config.libs_dir / ".complete"
    return marker.is_file() and marker.read_text() == _pom_digest()


def fetch_jars(config: BrokerConfig, progress: Progress) -> None:
    """Download the broker's jars with Maven into the cache (once per version of the pom)."""
    if jars_ready(config):
        return
    ensure_tools(need_mvn=True)
    progress(f"downloading the Kafka broker jars into {config.libs_dir} (first start only)")
    shutil.rmtree(config.libs_dir, ignore_errors=True)
    command = [
        "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={config.libs_dir}", "-DincludeScope=runtime",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalBrokerError(
            f"mvn could not fetch the Kafka jars (exit {result.returncode}):\n"
            + _tail_text(result.stdout + result.stderr)
        )
    (config.libs_dir / ".complete").write_text(_pom_digest())


def format_storage(config: BrokerConfig, progress: Progress) -> None:
    """Format the data folder with a new cluster id, unless it was formatted before."""
    if (config.data_dir / "meta.properties").is_file():
        if scram_arguments(config):
            progress(f"{config.data_dir} was formatted before: SCRAM users are not added, PLAIN works")
        return
    progress(f"formatting {config.data_dir}")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    command = java_command(
        config, "kafka.tools.StorageTool", "format",
        "-t", new_cluster_id(), "-c", str(config.properties_file), *scram_arguments(config),
    )  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalBrokerError(
            f"formatting {config.data_dir} failed (exit {result.returncode}):\n"
            + _tail_text(result.stdout + result.stderr)
        )


def launch(config: BrokerConfig) -> int:
    """Start `kafka.Kafka` detached (own session, output to a file); return its pid."""
    config.log_dir.mkdir(parents=True, exist_ok=True)
    with open(config.log_dir / "console.log", "ab") as console:
        process = subprocess.Popen(
            java_command(config, "kafka.Kafka", str(config.properties_file)),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[process.pid] = process
    config.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def read_pid(config: BrokerConfig) -> int | None:
    """The pid in the pid file, if there is one and its process is a live Kafka broker."""
    try:
        pid = int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_alive(pid) else None


def is_alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) `kafka.Kafka` process."""
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # no /proc: trust kill(pid, 0)
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"kafka.Kafka" in cmdline


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on `host`:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def is_answering(address: str, timeout_s: float = 2.0) -> bool:
    """Whether a broker at `address` answers a metadata request and lists itself as a broker."""
    host, _, port = address.rpartition(":")
    if not port_in_use(int(port), host):  # spare aiokafka's connection-refused error logs
        return False
    admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()


def log_tail(config: BrokerConfig, lines: int = 40) -> str:
    """The last lines of the broker's log files, for error messages."""
    parts = []
    for name in ("console.log", "server.log"):
        path = config.log_dir / name
        if path.is_file():
            text = _tail_text(path.read_text(errors="replace"), lines)
            parts.append(f"--- {path} ---\n{text}")
    return "\n".join(parts) or "(no log written)"


# --- lifecycle --------------------------------------------------------------------------------


def start(
    config: BrokerConfig = DEFAULT_CONFIG,
    *,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    progress: Progress = lambda _: None,
) -> str:
    """Start the broker unless it runs, wait until it answers, return its bootstrap address.

    Synchronous (each readiness probe runs its own short event loop): call it from a thread,
    not from inside a running event loop.
    """
    pid = read_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        pid = _launch_fresh(config, progress)
    else:
        progress(f"the broker already runs (pid {pid})")
    _wait_until_answering(config, pid, timeout_s, progress)
    return config.address


def stop(config: BrokerConfig = DEFAULT_CONFIG, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """SIGTERM the broker, wait for it to exit (SIGKILL after `timeout_s`); False if not running."""
    pid = read_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        return False
    _signal(pid, signal.SIGTERM)
    if not _wait_for_exit(pid, timeout_s):
        _signal(pid, signal.SIGKILL)
        _wait_for_exit(pid, 5.0)
    _children.pop(pid, None)
    config.pid_file.unlink(missing_ok=True)
    return True


def status(config: BrokerConfig = DEFAULT_CONFIG) -> BrokerStatus:
    """Whether the broker process of this folder runs, with its pid and address."""
    pid = read_pid(config)
    return BrokerStatus(running=pid is not None, pid=pid, address=config.address)


# --- helpers ----------------------------------------------------------------------------------


def _launch_fresh(config: BrokerConfig, progress: Progress) -> int:
    for port in (*config.listeners.values(), config.controller_port):
        if port_in_use(port):
            raise LocalBrokerError(f"port {port} is already in use; stop what listens there or pick other ports")
    fetch_jars(config, progress)
    ensure_tools(need_mvn=False)
    config.home.mkdir(parents=True, exist_ok=True)
    config.properties_file.write_text(render_properties(server_properties(config)))
    format_storage(config, progress)
    pid = launch(config)
    progress(f"started the broker (pid {pid}), waiting for it on {config.address}")
    return pid


def _wait_until_answering(config: BrokerConfig, pid: int, timeout_s: float, progress: Progress) -> None:
    deadline = time.monotonic() + timeout_s
    while not asyncio.run(is_answering(config.address)):
        if not is_alive(pid):
            _children.pop(pid, None)
            config.pid_file.unlink(missing_ok=True)
            raise LocalBrokerError(f"the broker exited during start:\n{log_tail(config)}")
        if time.monotonic() > deadline:
            raise LocalBrokerError(
                f"the broker (pid {pid}) did not answer on {config.address} within "
                f"{timeout_s:.0f}s; it is still running (stop it with `streamscore broker stop`)"
                f":\n{log_tail(config)}"
            )
        time.sleep(0.25)
    progress(f"the broker answers on {config.address}")


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    if pid in _children:
        try:
            _children[pid].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
