"""A local Kafka cluster of several KRaft nodes (each a broker and a controller) on 127.0.0.1.

`streamscore broker start --nodes 3` and the fault tests run one. Node i lives in
`<home>/node-<i>/` (data, logs, pid file, as a single broker's home), listens for clients on
`port + 2(i-1)` and for the other controllers on the port after; the jars are shared
(`<home>/libs`). Every node is formatted with the same cluster id, kept in `<home>/cluster.id`,
and the layout in `<home>/cluster.json`, so that `stop`, `status` and a restart find it. With
three nodes or more, topics get three replicas and need two in sync (`broker/config.py`).

A test helper can `kill` (SIGKILL), `pause` (SIGSTOP), `resume` (SIGCONT) and `restart` a node.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from broker import local
from broker.config import DEFAULT_PORT, BrokerConfig, BrokerStatus, new_cluster_id
from broker.errors import LocalBrokerError

LAYOUT_FILE = "cluster.json"
CLUSTER_ID_FILE = "cluster.id"


@dataclass(frozen=True)
class Cluster:
    """The nodes of a local cluster, each a `BrokerConfig` with the same controller quorum."""

    home: Path
    nodes: tuple[BrokerConfig, ...]

    @classmethod
    def at(
        cls,
        home: Path,
        size: int,
        *,
        port: int = DEFAULT_PORT,
        ports: list[tuple[int, int]] | None = None,
        libs: Path | None = None,
    ) -> Cluster:
        """A cluster of `size` nodes in `home`; `ports`: (client, controller) of each node, else from `port` on;
        `libs`: the jars (default `<home>/libs`)."""
        if size < 1:
            raise LocalBrokerError(f"a cluster has at least one node, not {size}")
        ports = ports or [(port + 2 * i, port + 2 * i + 1) for i in range(size)]
        quorum = tuple(controller for _, controller in ports)
        nodes = tuple(
            BrokerConfig(
                home=home / f"node-{i}", port=client, controller_port=controller, libs=libs or home / "libs",
                node_id=i, quorum=quorum,
            )
            for i, (client, controller) in enumerate(ports, start=1)
        )  # fmt: skip
        return cls(home, nodes)

    @classmethod
    def found_at(cls, home: Path) -> Cluster | None:
        """The cluster started in `home` before, if one was."""
        try:
            layout = json.loads((home / LAYOUT_FILE).read_text())
        except (OSError, ValueError):
            return None
        libs = Path(layout["libs"]) if layout.get("libs") else None
        return cls.at(home, len(layout["ports"]), ports=[tuple(pair) for pair in layout["ports"]], libs=libs)

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers of every node."""
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> BrokerConfig:
        """One node, by its id (1..n)."""
        if not 1 <= node_id <= len(self.nodes):
            raise LocalBrokerError(f"this cluster has nodes 1 to {len(self.nodes)}, not {node_id}")
        return self.nodes[node_id - 1]

    def cluster_id(self) -> str:
        """The id every node is formatted with (made once)."""
        path = self.home / CLUSTER_ID_FILE
        if not path.is_file():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()


def start(cluster: Cluster, *, timeout_s: float = 120.0, progress: local.Progress = lambda _: None) -> str:
    """Start every node that does not run, wait until all answer as one cluster; the bootstrap servers."""
    cluster_id = cluster.cluster_id()
    layout = {"ports": [[n.port, n.controller_port] for n in cluster.nodes], "libs": str(cluster.nodes[0].libs_dir)}
    (cluster.home / LAYOUT_FILE).write_text(json.dumps(layout))
    pids = [local.read_pid(node) or local.launch_fresh(node, progress, cluster_id) for node in cluster.nodes]
    for node, pid in zip(cluster.nodes, pids, strict=True):
        local.wait_until_answering(node, pid, timeout_s, progress)
    _wait_for_brokers(cluster, len(cluster.nodes), timeout_s)
    progress(f"the cluster of {len(cluster.nodes)} nodes answers on {cluster.bootstrap}")
    return cluster.bootstrap


def stop(cluster: Cluster, *, timeout_s: float = local.DEFAULT_STOP_TIMEOUT_S) -> bool:
    """Stop every node (resuming a paused one first); False if none was running."""
    for node in cluster.nodes:
        resume(cluster, node.node_id)
    return any([local.stop(node, timeout_s=timeout_s) for node in cluster.nodes])


def status(cluster: Cluster) -> list[BrokerStatus]:
    """Each node's status, node 1 first."""
    return [local.status(node) for node in cluster.nodes]


def kill(cluster: Cluster, node_id: int) -> None:
    """SIGKILL one node (its data stays: `restart` brings it back)."""
    _signal(cluster, node_id, signal.SIGKILL)
    local.stop(cluster.node(node_id), timeout_s=10.0)  # reaps it and removes its pid file


def pause(cluster: Cluster, node_id: int) -> None:
    """SIGSTOP one node: it holds its connections and answers nothing (a hung machine)."""
    _signal(cluster, node_id, signal.SIGSTOP)


def resume(cluster: Cluster, node_id: int) -> None:
    """SIGCONT a paused node."""
    _signal(cluster, node_id, signal.SIGCONT)


def restart(cluster: Cluster, node_id: int, *, timeout_s: float = 120.0) -> None:
    """Start a stopped or killed node again with its data; return once it answers."""
    node = cluster.node(node_id)
    pid = local.read_pid(node) or local.launch_fresh(node, lambda _: None, cluster.cluster_id())
    local.wait_until_answering(node, pid, timeout_s, lambda _: None)


def _signal(cluster: Cluster, node_id: int, signum: signal.Signals) -> None:
    pid = local.read_pid(cluster.node(node_id))
    if pid is not None:
        local.signal_process(pid, signum)


def _wait_for_brokers(cluster: Cluster, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while asyncio.run(_brokers(cluster.bootstrap)) < count:
        if time.monotonic() > deadline:
            raise LocalBrokerError(
                f"the cluster did not show {count} brokers on {cluster.bootstrap} in {timeout_s:.0f}s"
            )
        time.sleep(0.25)


async def _brokers(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        return len((await admin.describe_cluster())["brokers"])
    except (KafkaError, OSError, TimeoutError):
        return 0
    finally:
        await admin.close()
