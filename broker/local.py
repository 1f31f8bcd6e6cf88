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

The configuration (ports, optional SASL and TLS listeners, users, certificates) and the
server.properties it becomes are in `broker/config.py`; errors are in `broker/errors.py`;
creating topics is `transport.admin.create_topics`.
"""

from __future__ import annotations

import asyncio
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
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from broker.config import DEFAULT_CONFIG as DEFAULT_CONFIG
from broker.config import BrokerConfig as BrokerConfig
from broker.config import BrokerStatus as BrokerStatus
from broker.config import new_cluster_id, render_properties, scram_arguments, server_properties
from broker.errors import LocalBrokerError, ToolMissingError

DEFAULT_START_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 30.0
JAVA_MIN_VERSION = 17
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true")
POM = Path(__file__).with_name("pom.xml")
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
INSTALL_HINT = "install them, e.g. `apt-get install openjdk-17-jre-headless maven`"

Progress = Callable[[str], None]


# --- deciding: pure -----------------------------------------------------------------------


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
    with contextlib.suppress(FileNotFoundError):  # a link or an unremovable file fails here, not with mixed jars
        shutil.rmtree(config.libs_dir)
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


def format_storage(config: BrokerConfig, progress: Progress, cluster_id: str | None = None) -> None:
    """Format the data folder (with `cluster_id`, else a new one), unless it was formatted before."""
    if (config.data_dir / "meta.properties").is_file():
        if scram_arguments(config):
            progress(f"{config.data_dir} was formatted before: SCRAM users are not added, PLAIN works")
        return
    progress(f"formatting {config.data_dir}")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    command = java_command(
        config, "kafka.tools.StorageTool", "format",
        "-t", cluster_id or new_cluster_id(), "-c", str(config.properties_file), *scram_arguments(config),
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


def free_port() -> int:
    """A TCP port nobody listens on now on 127.0.0.1 (so that test and bench brokers never collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
        pid = launch_fresh(config, progress)
    else:
        progress(f"the broker already runs (pid {pid})")
    wait_until_answering(config, pid, timeout_s, progress)
    return config.address


def stop(config: BrokerConfig = DEFAULT_CONFIG, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
    """SIGTERM the broker, wait for it to exit (SIGKILL after `timeout_s`); False if not running."""
    pid = read_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        return False
    signal_process(pid, signal.SIGTERM)
    if not _wait_for_exit(pid, timeout_s):
        signal_process(pid, signal.SIGKILL)
        _wait_for_exit(pid, 5.0)
    _children.pop(pid, None)
    config.pid_file.unlink(missing_ok=True)
    return True


def status(config: BrokerConfig = DEFAULT_CONFIG) -> BrokerStatus:
    """Whether the broker process of this folder runs, with its pid and address."""
    pid = read_pid(config)
    return BrokerStatus(running=pid is not None, pid=pid, address=config.address)


# --- helpers ----------------------------------------------------------------------------------


def launch_fresh(config: BrokerConfig, progress: Progress, cluster_id: str | None = None) -> int:
    for port in (*config.listeners.values(), config.controller_port):
        if port_in_use(port):
            raise LocalBrokerError(f"port {port} is already in use; stop what listens there or pick other ports")
    fetch_jars(config, progress)
    ensure_tools(need_mvn=False)
    config.home.mkdir(parents=True, exist_ok=True)
    config.properties_file.write_text(render_properties(server_properties(config)))
    format_storage(config, progress, cluster_id)
    pid = launch(config)
    progress(f"started the broker (pid {pid}), waiting for it on {config.address}")
    return pid


def wait_until_answering(config: BrokerConfig, pid: int, timeout_s: float, progress: Progress) -> None:
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


def signal_process(pid: int, signum: signal.Signals) -> None:
    """Send `signum` to `pid`, if it still runs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
