"""Shared fixtures: a real local Kafka broker for the session, unique topics and groups per test.

The broker runs from `broker/local.py` on two free ports (never the demo broker's 9092),
with its data in a fresh temporary folder and its jars in `<repo>/.kafka/libs` (downloaded once).
It starts on first use by a `kafka`-marked test and stops when the session ends. Likewise a real
S3-compatible server (`tests/s3server.py`, authentication on) starts on first use by a test of
the object-store registry, and each such test gets a bucket of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from broker import local
from tests import s3server
from transport.admin import create_topics

REPO = Path(__file__).resolve().parent.parent


MakeTopics = Callable[..., Awaitable[list[str]]]


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--chaos=full` runs every fault scenario of tests/chaos at full size (`make chaos`); by default only
    the fast subset (marker `chaos_fast`) runs, small."""
    parser.addoption(
        "--chaos",
        choices=("fast", "full"),
        default="fast",
        help="fault scenarios on a 3-node cluster: the fast subset (default) or every one, at full size",
    )


@pytest.fixture(scope="session")
def kafka_config(tmp_path_factory: pytest.TempPathFactory) -> local.BrokerConfig:
    """Where the session's broker keeps its data (fresh) and jars (shared cache)."""
    return local.BrokerConfig(
        home=tmp_path_factory.mktemp("kafka"),
        port=local.free_port(),
        controller_port=local.free_port(),
        libs=REPO / ".kafka" / "libs",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_config: local.BrokerConfig) -> Iterator[str]:
    """The bootstrap address of a local broker that runs for the whole session."""
    try:  # a broker that fails to answer in time is stopped too
        yield local.start(kafka_config, timeout_s=120.0)
    finally:
        local.stop(kafka_config)


@pytest.fixture
def make_topics(kafka_bootstrap: str) -> MakeTopics:
    """An async factory: `await make_topics("in", "out", partitions=3)` -> unique topic names."""

    async def make(*suffixes: str, partitions: int = 3) -> list[str]:
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        names = [f"{prefix}-{suffix}" for suffix in suffixes]
        await create_topics(kafka_bootstrap, names, partitions)
        return names

    return make


@pytest.fixture
def unique_group() -> str:
    """A consumer group id no other test uses."""
    return f"g-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3server.S3Server]:
    """A local S3-compatible server for the whole session, checking every request's credentials."""
    server = s3server.start()
    try:
        yield server
    finally:
        s3server.stop(server.process)


@pytest.fixture
def s3_root(s3_server: s3server.S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<a new bucket>/team/models`, with the standard AWS variables pointing at the server."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.new_bucket()}/team/models"
