"""The local Kafka broker: its KRaft configuration, and a real round trip through it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from broker import cli as broker_cli
from broker import local
from broker.config import DEFAULT_SASL_PORT, new_cluster_id, parse_users, render_properties, server_properties
from broker.errors import LocalBrokerError
from streamscore.cli import make_parser
from tests.conftest import MakeTopics


def test_server_properties_configure_single_node_kraft() -> None:
    """server.properties makes node 1 both broker and controller, on the chosen ports only."""
    config = local.BrokerConfig(home=Path("/tmp/k"), port=29092, controller_port=29093)

    properties = server_properties(config)

    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert properties["controller.listener.names"] == "CONTROLLER"
    assert properties["inter.broker.listener.name"] == "PLAINTEXT"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert properties["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert properties["log.dirs"] == str(Path("/tmp/k/data"))
    assert properties["auto.create.topics.enable"] == "false"


def test_server_properties_fit_one_replica() -> None:
    """Every internal topic asks for one replica, so a single node can create it."""
    properties = server_properties(local.BrokerConfig())

    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert properties[key] == "1", key
    assert properties["group.initial.rebalance.delay.ms"] == "0"


def test_render_properties_writes_one_key_a_line() -> None:
    """The properties file is `key=value` lines in the given order."""
    assert render_properties({"a": "1", "b.c": "x y"}) == "a=1\nb.c=x y\n"


def test_new_cluster_id_is_base64url_of_16_bytes() -> None:
    """A cluster id is 22 characters of unpadded base64url, new every time."""
    first, second = new_cluster_id(), new_cluster_id()

    assert len(first) == 22
    assert set(first) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert first != second


@pytest.mark.parametrize(
    ("output", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_401"', 8), ("", 0)],
)
def test_java_major_version(output: str, major: int) -> None:
    """`java -version` output gives the major version (old `1.x` style included)."""
    assert major == local.java_major_version(output)


@pytest.mark.kafka
async def test_records_round_trip(make_topics: MakeTopics, unique_group: str, kafka_bootstrap: str) -> None:
    """Records produced with acks=all and idempotence to 3 partitions are consumed back intact."""
    [topic] = await make_topics("roundtrip", partitions=3)
    sent = {(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(30)}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    received = await _consume(kafka_bootstrap, topic, unique_group, len(sent))

    assert sent == {(key, value) for key, value, _ in received}
    assert {0, 1, 2} == {partition for _, _, partition in received}


@pytest.mark.kafka
async def test_topics_have_the_partitions_asked_for(make_topics: MakeTopics, kafka_bootstrap: str) -> None:
    """`create_topics` returns only once every partition of every topic is known to clients."""
    names = await make_topics("a", "b", partitions=4)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
    finally:
        await admin.close()
    partitions = [{p["partition"] for p in topic["partitions"]} for topic in topics]

    assert [{0, 1, 2, 3}, {0, 1, 2, 3}] == partitions


@pytest.mark.kafka
def test_status_reports_running_broker(kafka_bootstrap: str, kafka_config: local.BrokerConfig) -> None:
    """`status` of the session's broker says running, with a pid and the bootstrap address."""
    status = local.status(kafka_config)

    assert status.running
    assert status.pid is not None
    assert kafka_bootstrap == status.address == f"127.0.0.1:{kafka_config.port}"


@pytest.mark.kafka
def test_start_of_running_broker_returns_its_address(kafka_bootstrap: str, kafka_config: local.BrokerConfig) -> None:
    """Starting a broker that already runs keeps the same process and returns its address."""
    before = local.status(kafka_config).pid

    assert kafka_bootstrap == local.start(kafka_config, timeout_s=10.0)
    assert before == local.status(kafka_config).pid


async def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[tuple[bytes, bytes, int]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    await consumer.start()
    received: list[tuple[bytes, bytes, int]] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    assert isinstance(tp, TopicPartition)
                    received += [(r.key, r.value, tp.partition) for r in records]
    finally:
        await consumer.stop()
    return received


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """Kafka's storage tool reads "-t -xyz" as an option; an id drawn with a leading "-" is drawn again."""
    draws = iter([b"\xf8" + bytes(15), bytes(16)])  # base64url of 0xf8... starts with "-"

    assert "AAAAAAAAAAAAAAAAAAAAAA" == new_cluster_id(lambda _: next(draws))


def test_start_with_acls_writes_a_users_file_once_and_turns_the_authorizer_on(tmp_path: Path) -> None:
    """`broker start --acls` writes <dir>/users.properties (mode 600, admin, worker and producer with random
    passwords) when it is missing, reuses it next time, and configures the authorizer and SASL port."""
    args = make_parser().parse_args(["broker", "start", "--acls", "--dir", str(tmp_path), "--sasl-port", "9400"])

    first = broker_cli.broker_config(args)
    second = broker_cli.broker_config(args)

    assert (True, 9400) == (first.authorizer, first.sasl_port)
    assert ["admin", "worker", "producer"] == list(first.users)
    assert first.users == second.users
    assert 0o600 == (tmp_path / "users.properties").stat().st_mode & 0o777


def test_topics_create_with_acls_authenticates_as_admin_from_the_users_file(tmp_path: Path) -> None:
    """`topics create --acls` reads --users (it never writes one) and connects as admin over SASL PLAIN."""
    users = tmp_path / "users.txt"
    users.write_text("# name=password\nadmin=s3cret\n")
    argv = ["broker", "topics", "create", "t", "--acls", "--dir", str(tmp_path), "--users", str(users)]

    config = broker_cli.broker_config(make_parser().parse_args(argv))
    admin = broker_cli.admin_connection(config)

    assert ("SASL_PLAINTEXT", "admin", "s3cret") == (admin.security_protocol, admin.sasl_username, admin.sasl_password)
    assert f"127.0.0.1:{DEFAULT_SASL_PORT}" == admin.bootstrap_servers
    with pytest.raises(LocalBrokerError, match="cannot read the users file"):
        broker_cli.broker_config(make_parser().parse_args([*argv[:-1], str(tmp_path / "missing")]))


def test_a_users_file_line_without_a_password_is_refused_with_its_line_number() -> None:
    """A users file line that is not `name=password` names the file and the line."""
    with pytest.raises(LocalBrokerError, match=r"users.txt line 2: expected `name=password`"):
        parse_users("admin=x\nworker\n", "users.txt")
