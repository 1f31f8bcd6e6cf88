"""Least privilege on a real broker with ACLs checked: the README's ACL set is enough, and each ACL is needed.

A broker of its own (module-scoped), started by `streamscore broker start --acls`, runs KRaft's
StandardAuthorizer; `admin` is its super user and creates topics and grants ACLs
(`broker/acls.py`), `worker` and `producer` are ordinary principals with exactly the ACLs the
README lists. Each case uses fresh topics and a fresh group, in one of MODES: at least once;
at least once with a retry topic; exactly once with a retry topic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from broker import local
from broker.acls import Acl, create_acls
from demo.models import install_model, make_mlp
from producer.client import FeatureProducer
from schemas import headers as h
from schemas.codec import decode_response, encode_request
from tests.conftest import REPO
from tests.harness import worker_env
from transport.admin import create_topics
from transport.connection import Connection
from worker.runner import Worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PASSWORDS = {"admin": "admin-secret", "worker": "worker-secret", "producer": "producer-secret"}
ROWS = 4
FAIL_FAST_S = 30.0  # a worker missing an ACL must stop well within this


MODES = ("at-least-once", "retry-topics", "exactly-once")  # the last with a retry topic too
RETRY_DELAY_MS = "500"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.BrokerConfig]:
    """A broker started by `streamscore broker start --acls`: users admin (super user), worker and producer."""
    home = tmp_path_factory.mktemp("kafka-acls")
    (home / "libs").symlink_to(REPO / ".kafka" / "libs")
    users = home / "users.txt"
    users.write_text("".join(f"{name}={password}\n" for name, password in PASSWORDS.items()))
    config = local.BrokerConfig(
        home=home,
        port=local.free_port(),
        controller_port=local.free_port(),
        sasl_port=local.free_port(),
        users=PASSWORDS,
        authorizer=True,
    )
    ports = {"--port": config.port, "--controller-port": config.controller_port, "--sasl-port": config.sasl_port}
    command = [sys.executable, "-m", "streamscore", "broker", "start", "--acls", "--dir", str(home)]
    command += [*(str(part) for flag, port in ports.items() for part in (flag, port)), "--users", str(users)]
    try:
        started = subprocess.run(
            [*command, "--timeout", "120"], cwd=REPO, env=worker_env({}), capture_output=True, text=True, timeout=180
        )
        assert 0 == started.returncode, started.stderr
        assert config.address_of("SASL_PLAINTEXT") == started.stdout.strip()
        yield config
    finally:
        local.stop(config)


def connection(config: local.BrokerConfig, user: str) -> Connection:
    """`user`'s SASL PLAIN connection to the broker."""
    return Connection(
        bootstrap_servers=config.address_of("SASL_PLAINTEXT"),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=user,
        sasl_password=PASSWORDS[user],
    )


def worker_acls(s: Settings, principal: str = "User:worker") -> list[Acl]:
    """The ACLs the README lists for a worker with settings `s` (control topic on; retry topics and
    exactly once as `s` says)."""
    acls = [Acl(principal, op, "TOPIC", topic) for topic in s.input_topics for op in ("READ", "DESCRIBE")]
    acls.append(Acl(principal, "READ", "TOPIC", s.control_topic))
    written = [s.results_topic, s.dead_letter_topic_name, s.shadow_topic_name, s.status_topic_name]
    written += s.input_topics[1:]  # the retry topics
    acls += [Acl(principal, op, "TOPIC", topic) for topic in written for op in ("WRITE", "DESCRIBE")]
    acls.append(Acl(principal, "READ", "GROUP", s.group_id))
    if s.exactly_once:
        prefix = f"{s.transactional_id_prefix or s.group_id}-"
        acls += [Acl(principal, op, "TRANSACTIONAL_ID", prefix, "PREFIXED") for op in ("WRITE", "DESCRIBE")]
    return acls


def producer_acls(input_topic: str, principal: str = "User:producer") -> list[Acl]:
    """The ACLs the README lists for a producer of requests."""
    return [Acl(principal, op, "TOPIC", input_topic) for op in ("WRITE", "DESCRIBE")]


@dataclass
class Case:
    """One case's topics, settings, the requests it produced and the input offsets of each."""

    settings: Settings
    ids_by_offset: dict[int, str]


async def new_case(broker: local.BrokerConfig, tmp_path: Path, mode: str) -> Case:
    """Fresh topics and group for `mode`; ROWS good requests, one pinned to a version the worker lacks
    (it waits on the retry topic, if any, then is dead-lettered) and one that is not JSON, produced
    by `producer`."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    settings = Settings(
        **vars(connection(broker, "worker")),
        input_topic=f"{prefix}-in",
        results_topic=f"{prefix}-out",
        control_topic=f"{prefix}-control",
        group_id=f"g-{prefix}",
        model_root=str(root),
        model_name="mlp",
        log_format="console",
        worker_id="test-acl-worker",
        burst=True,
        retry_attempts=2,
        retry_max_s=1.0,
        guarantee="exactly-once" if mode == "exactly-once" else "at-least-once",
        retry_topic_delays_ms=() if mode == "at-least-once" else (RETRY_DELAY_MS,),
    )
    admin = connection(broker, "admin")
    topics = [*settings.input_topics, settings.results_topic, settings.dead_letter_topic_name]
    topics += [settings.control_topic, settings.status_topic_name, settings.shadow_topic_name]
    await create_topics(admin, topics)
    await create_acls(admin, producer_acls(settings.input_topic))
    await produce_requests(connection(broker, "producer"), settings.input_topic)
    inputs = await read_all(admin, settings.input_topic)
    return Case(settings, {r.offset: request_id(r.value) for r in inputs})


async def produce_requests(producer: Connection, topic: str) -> None:
    """ROWS requests with FeatureProducer, then one for mlp version 2 (not installed) and one value that
    is not JSON (an idempotent producer)."""
    async with FeatureProducer(topic=topic, model="mlp", **vars(producer)) as features:
        await features.send_rows(np.random.default_rng(0).random((ROWS, 8), dtype=np.float32))
    late = encode_request({"x": np.zeros((1, 8), np.float32)}, id="late")
    raw = AIOKafkaProducer(**producer.kafka_options(), enable_idempotence=True)
    await raw.start()
    try:
        await raw.send_and_wait(topic, late, headers=[(h.MODEL_VERSION, b"2")])
        await raw.send_and_wait(topic, b"not json")
    finally:
        await raw.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_worker_with_exactly_the_readme_acls_scores_every_request(
    acl_broker: local.BrokerConfig, tmp_path: Path, mode: str
) -> None:
    """With exactly the README's worker ACLs for its mode (no IDEMPOTENT_WRITE, no DESCRIBE_CONFIGS),
    every request is scored, the two bad ones dead-lettered (the late one after its retry topic, when
    there is one), and the group's offset committed to the end."""
    case = await new_case(acl_broker, tmp_path, mode)
    admin = connection(acl_broker, "admin")
    s = case.settings
    await create_acls(admin, worker_acls(s))

    assert 0 == await asyncio.wait_for(Worker(s).run(), 60.0)

    results = [decode_response(r.value) for r in await read_all(admin, s.results_topic) if r.value]
    dead = await read_all(admin, s.dead_letter_topic_name)
    retried = [len(await read_all(admin, topic)) for topic in s.input_topics[1:]]
    assert sorted(i for i in case.ids_by_offset.values() if i and i != "late") == sorted(r.id for r in results)
    assert ["", "late"] == sorted(request_id(r.value) for r in dead)
    assert ([] if mode == "at-least-once" else [1]) == retried
    assert ROWS + 2 == (await committed(admin, s))[s.input_topic]


@dataclass(frozen=True)
class Removed:
    """An ACL a case removes: its operation, the resource (a function of the settings), and its type."""

    operation: str
    resource: Callable[[Settings], str]
    kind: str = "TOPIC"
    pattern: str = "LITERAL"
    modes: tuple[str, ...] = MODES

    def acl(self, s: Settings) -> Acl:
        return Acl("User:worker", self.operation, self.kind, self.resource(s), self.pattern)


#: Each ACL a case removes. Not here: DESCRIBE (READ and WRITE imply it), WRITE on the status and
#: shadow topics (status records and shadow results are best effort by design: a refusal is
#: logged, `status_not_published` or a dropped shadow result, and the worker goes on).
REMOVED = {
    "input-read": Removed("READ", lambda s: s.input_topic),
    "control-read": Removed("READ", lambda s: s.control_topic),
    "results-write": Removed("WRITE", lambda s: s.results_topic),
    "dead-letter-write": Removed("WRITE", lambda s: s.dead_letter_topic_name),
    "group-read": Removed("READ", lambda s: s.group_id, "GROUP"),
    "retry-read": Removed("READ", lambda s: s.input_topics[1], modes=("retry-topics", "exactly-once")),
    "retry-write": Removed("WRITE", lambda s: s.input_topics[1], modes=("retry-topics", "exactly-once")),
    "transactional-id-write": Removed(
        "WRITE", lambda s: f"{s.group_id}-", "TRANSACTIONAL_ID", "PREFIXED", modes=("exactly-once",)
    ),
}
MATRIX = [(mode, name) for mode in MODES for name, removed in REMOVED.items() if mode in removed.modes]


@pytest.mark.parametrize(("mode", "removed"), MATRIX)
async def test_worker_missing_one_acl_stops_naming_it_and_loses_nothing(
    acl_broker: local.BrokerConfig, tmp_path: Path, mode: str, removed: str
) -> None:
    """Every README ACL of the mode but one: the worker stops within FAIL_FAST_S with exit code 2 (or a
    startup error), its message names the resource and the operation, and no committed offset passes
    a request whose result or dead letter was not written."""
    case = await new_case(acl_broker, tmp_path, mode)
    admin = connection(acl_broker, "admin")
    s = case.settings
    missing = REMOVED[removed].acl(s)
    await create_acls(admin, [acl for acl in worker_acls(s) if acl != missing])

    worker = Worker(s)
    try:
        code: int | str = await asyncio.wait_for(worker.run(), FAIL_FAST_S)
        message = str(worker.fatal)
    except Exception as error:  # a startup failure
        code, message = type(error).__name__, str(error)

    assert code in (2, "NotAuthorizedError"), message
    assert repr(missing.name) in message or (missing.pattern == "PREFIXED" and f"'{missing.name}" in message)
    assert missing.operation in message
    await assert_nothing_lost(admin, case)


async def assert_nothing_lost(admin: Connection, case: Case) -> None:
    """Every input offset below the committed one has its result, its dead letter or its next attempt
    (on a retry topic) written."""
    s = case.settings
    results = {decode_response(r.value).id for r in await read_all(admin, s.results_topic) if r.value}
    dead = await read_all(admin, s.dead_letter_topic_name)
    retried = [record for topic in s.input_topics[1:] for record in await read_all(admin, topic)]
    answered = results | {request_id(r.value) for r in [*dead, *retried]} - {""}
    handled = dead_letter_offsets(dead, s.input_topic)
    handled |= {offset for offset, request in case.ids_by_offset.items() if request in answered}
    position = (await committed(admin, s)).get(s.input_topic, 0)
    assert set(range(position)) <= handled


# --- helpers ----------------------------------------------------------------------------------


def request_id(value: bytes | None) -> str:
    """The id of a V2 request; "" for a value that is not one."""
    try:
        return str(json.loads(value or b"")["id"])
    except (ValueError, KeyError, TypeError):
        return ""


async def read_all(connection: Connection, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` (one partition), read as `connection`'s principal up to the end."""
    consumer = AIOKafkaConsumer(
        **connection.kafka_options(), group_id=None, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(20.0):
            while await consumer.position(partition) < end:
                batches = await consumer.getmany(partition, timeout_ms=200)
                found += batches.get(partition, [])
        return found
    finally:
        await consumer.stop()


async def committed(connection: Connection, s: Settings) -> dict[str, int]:
    """The group's committed offsets, by topic (partition 0 only; topics without one left out)."""
    admin = AIOKafkaAdminClient(**connection.kafka_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(s.group_id)
    finally:
        await admin.close()
    return {tp.topic: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def dead_letter_offsets(dead: list[ConsumerRecord[bytes, bytes]], topic: str) -> set[int]:
    """The offsets on `topic` of the records the dead letters stand for (read from it, not a retry topic)."""
    found = set()
    for record in dead:
        headers = dict(record.headers)
        if headers[h.DLT_ORIGINAL_TOPIC].decode() == topic:
            found.add(int.from_bytes(headers[h.DLT_ORIGINAL_OFFSET], "big"))
    return found
