"""The chaos suite's hands on the cluster: kill, pause, resume and restart a node; find who leads what; heal.

`broker.cluster` does the acting (its calls are synchronous and run their own event loops, so they
run here in a thread); this module keeps track of what it broke, so that `heal` can put the
cluster back as the next scenario expects it: three nodes up, every replica in sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from broker import cluster as local_cluster
from broker.cluster import Cluster

#: The internal topics: the group coordinator's (offsets) and the transaction coordinator's.
OFFSETS_TOPIC = "__consumer_offsets"
TRANSACTIONS_TOPIC = "__transaction_state"
HEAL_TIMEOUT_S = 180.0


@dataclass
class Nodes:
    """A running local cluster, and which of its nodes a scenario has killed or paused."""

    cluster: Cluster
    down: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)

    @property
    def bootstrap(self) -> str:
        """Every node's address: clients find the live ones."""
        return self.cluster.bootstrap

    @property
    def ids(self) -> list[int]:
        """The node ids, 1 to n."""
        return [node.node_id for node in self.cluster.nodes]

    async def kill(self, node_id: int) -> None:
        """SIGKILL a node (its data stays)."""
        self.down.add(node_id)
        await asyncio.to_thread(local_cluster.kill, self.cluster, node_id)

    async def pause(self, node_id: int) -> None:
        """SIGSTOP a node: it keeps its connections open and answers nothing."""
        self.paused.add(node_id)
        await asyncio.to_thread(local_cluster.pause, self.cluster, node_id)

    async def resume(self, node_id: int) -> None:
        """SIGCONT a paused node."""
        await asyncio.to_thread(local_cluster.resume, self.cluster, node_id)
        self.paused.discard(node_id)

    async def restart(self, node_id: int) -> None:
        """Start a killed node again with its data; return once it answers."""
        await asyncio.to_thread(local_cluster.restart, self.cluster, node_id)
        self.down.discard(node_id)

    async def describe(self, topics: Sequence[str]) -> list[dict[str, Any]]:
        """The admin client's description of `topics` (partitions with leader, replicas, isr)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            return list(await admin.describe_topics(list(topics)))
        finally:
            await admin.close()

    async def leader_of(self, topic: str, partition: int = 0, timeout_s: float = 60.0) -> int:
        """The node that leads `topic`[`partition`], once it has a leader."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                for described in await self.describe([topic]):
                    for part in described.get("partitions") or ():
                        if part["partition"] == partition and part["leader"] in self.ids:
                            return int(part["leader"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}] has no leader after {timeout_s:.0f}s")
            await asyncio.sleep(0.5)

    async def in_sync(self, topics: Sequence[str]) -> bool:
        """Whether every partition of `topics` that exists has a leader and every replica in sync."""
        try:
            described = await self.describe(topics)
        except (KafkaError, OSError, TimeoutError):
            return False
        for topic in described:
            if topic.get("error_code") not in (0, 3):  # 3: unknown topic (an internal one not made yet)
                return False
            for part in topic.get("partitions") or ():
                if part["leader"] not in self.ids or sorted(part["isr"]) != sorted(part["replicas"]):
                    return False
        return True

    async def heal(self, topics: Sequence[str] = (), timeout_s: float = HEAL_TIMEOUT_S) -> None:
        """Resume and restart whatever a scenario stopped, and wait until every replica is in sync again."""
        for node_id in sorted(self.paused):
            await self.resume(node_id)
        for node_id in sorted(self.down):
            await self.restart(node_id)
        watched = [OFFSETS_TOPIC, TRANSACTIONS_TOPIC, *topics]
        deadline = time.monotonic() + timeout_s
        while not await self.in_sync(watched):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not get every replica of {watched} in sync in {timeout_s:.0f}s")
            await asyncio.sleep(0.5)
