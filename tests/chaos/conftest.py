"""The chaos suite's fixtures: a local 3-node cluster for the package, a fresh world per scenario, the table.

The cluster runs from `broker/cluster.py`: three KRaft nodes (each a broker and a controller) on
free ports, jars from `<repo>/.kafka/libs`, data in a temporary folder; topics get three replicas
and need two in sync. It starts with the first scenario and stops after the last one of this
package (package scope: the rest of the session, on the single broker of tests/conftest.py, does
not share the machine's two cores with three idle JVMs). Scenarios kill, pause and restart its
nodes through `Nodes` (tests/chaos/nodes.py); after each one the cluster is healed.

Tiers: by default only the scenarios marked `chaos_fast` run, small (`make test`); `--chaos=full`
runs them all at full size (`make chaos`). Each scenario's accounting row is printed as a table at
the end of the session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from broker import cluster as local_cluster
from broker.cluster import Cluster
from broker.local import free_port
from demo.models import install_model, make_mlp, make_slow_model
from tests.chaos.checker import Row, render_table
from tests.chaos.nodes import Nodes
from tests.chaos.scenario import PARTITIONS, Chaos, Tier, make_topics

REPO = Path(__file__).resolve().parents[2]
NODES = 3
ROWS = pytest.StashKey[list[tuple[str, Row]]]()
OUTCOMES = pytest.StashKey[dict[str, str]]()

MakeChaos = Callable[..., Awaitable[Chaos]]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[ROWS] = []
    config.stash[OUTCOMES] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the fast tier, leave out the chaos scenarios not marked `chaos_fast`."""
    if config.getoption("--chaos") == "full":
        return
    slow = [i for i in items if i.get_closest_marker("chaos") and not i.get_closest_marker("chaos_fast")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if i not in set(slow)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Remember each chaos scenario's outcome, for the table."""
    report = yield
    if item.get_closest_marker("chaos") and (report.when == "call" or report.outcome != "passed"):
        outcomes = item.config.stash[OUTCOMES]
        if report.when == "call" or item.nodeid not in outcomes:
            outcomes[item.nodeid] = report.outcome
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The checker's table: one row per scenario and guarantee that reached its accounting."""
    rows, outcomes = config.stash[ROWS], config.stash[OUTCOMES]
    if not rows and not outcomes:
        return
    terminalreporter.section(f"chaos: every input id accounted for ({config.getoption('--chaos')} tier)")
    by_scenario = {(row.scenario, row.guarantee): outcomes.get(nodeid, "?") for nodeid, row in rows}
    if rows:
        terminalreporter.write_line(render_table([row for _, row in rows], by_scenario))
    accounted = {nodeid for nodeid, _ in rows}
    for nodeid, outcome in outcomes.items():
        if nodeid not in accounted and outcome != "skipped":
            terminalreporter.write_line(f"no accounting ({outcome} before the checker ran): {nodeid}")


@pytest.fixture(scope="session")
def tier(pytestconfig: pytest.Config) -> Tier:
    """fast (`make test`) or full (`make chaos`)."""
    return Tier(pytestconfig.getoption("--chaos"))


@pytest.fixture(scope="package")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """A local cluster of three nodes on free ports, running for this package's scenarios."""
    ports: list[int] = []
    while len(ports) < 2 * NODES:
        if (port := free_port()) not in ports:
            ports.append(port)
    pairs = list(zip(ports[::2], ports[1::2], strict=True))
    cluster = Cluster.at(tmp_path_factory.mktemp("cluster"), NODES, ports=pairs, libs=REPO / ".kafka" / "libs")
    try:  # a cluster that fails to come up is stopped too
        local_cluster.start(cluster, timeout_s=180.0)
        yield Nodes(cluster)
    finally:
        local_cluster.stop(cluster)


@pytest.fixture(scope="session")
def mlp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with the demo MLP (x FP32 [N, 8] -> probabilities [N, 3]); workers only read it."""
    root = tmp_path_factory.mktemp("models")
    install_model(root, "mlp", "1", make_mlp)
    return root


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with the slow model (x FP32 [N, 1] -> y = x, a run spins max(x) times) as `slow` 1."""
    root = tmp_path_factory.mktemp("slow-models")
    install_model(root, "slow", "1", make_slow_model)
    return root


@pytest.fixture
async def chaos(
    nodes: Nodes, tier: Tier, tmp_path: Path, mlp_root: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeChaos]:
    """An async factory: `await chaos("scenario", guarantee)` -> a fresh world on a healed cluster.

    Whatever the scenario leaves running is killed at the end, and the cluster healed (every node
    up, every replica in sync) for the next one.
    """
    made: list[Chaos] = []

    def record(row: Row) -> None:
        request.config.stash[ROWS].append((request.node.nodeid, row))

    async def make(
        scenario: str,
        guarantee: str,
        *,
        model_root: Path | None = None,
        dead_configs: Mapping[str, str] | None = None,
        results_configs: Mapping[str, str] | None = None,
        partitions: int = PARTITIONS,
    ) -> Chaos:
        await nodes.heal()
        topics = await make_topics(nodes.bootstrap, dead_configs, results_configs, partitions)
        world = Chaos(
            nodes,
            tier,
            tmp_path,
            scenario,
            guarantee,
            model_root or mlp_root,
            topics,
            f"g-{uuid.uuid4().hex[:8]}",
            record,
            partitions=partitions,
        )
        made.append(world)
        return world

    try:
        yield make
    finally:
        for world in made:
            await world.close()
