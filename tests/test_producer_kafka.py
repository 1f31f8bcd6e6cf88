"""The producer against a real broker: records land keyed by id, decodable, with model headers."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from producer.cli import add_parser, run
from producer.client import FeatureProducer
from schemas import headers as h
from schemas.codec import decode_request
from tests.conftest import MakeTopics

pytestmark = pytest.mark.kafka


async def read_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30.0) -> list[Any]:
    """Every record on `topic` (all `partitions`, from the start to the end), ordered by key."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        records: list[Any] = []
        async with asyncio.timeout(timeout_s):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batches = await consumer.getmany(timeout_ms=500)
                records.extend(r for batch in batches.values() for r in batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: r.key)


async def test_send_rows_lands_one_record_per_request(kafka_bootstrap: str, make_topics: MakeTopics) -> None:
    """10 rows at 3 per request: 4 records, keys == ids, values decode to the rows, headers set."""
    (topic,) = await make_topics("in", partitions=3)
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    ids = ["r-0", "r-3", "r-6", "r-9"]
    async with FeatureProducer(kafka_bootstrap, topic, model="iris", model_version="2", datatype="FP32") as producer:
        sent = await producer.send_rows(rows, ids=ids, rows_per_request=3)

    records = await read_topic(kafka_bootstrap, topic, 3)

    assert ids == sent
    assert [i.encode() for i in ids] == [r.key for r in records]
    decoded = [decode_request(r.value) for r in records]
    assert ids == [d.id for d in decoded]
    expected_sizes = [3, 3, 3, 1]
    assert expected_sizes == [d.rows for d in decoded]
    np.testing.assert_array_equal(rows, np.concatenate([d.inputs[0].data for d in decoded]))
    expected_headers = [(h.MODEL, b"iris"), (h.MODEL_VERSION, b"2")]
    assert all(expected_headers == list(r.headers) for r in records)


async def test_send_rows_without_model_sends_no_model_headers(kafka_bootstrap: str, make_topics: MakeTopics) -> None:
    """Without a configured model, records carry no model headers and generated ids are unique."""
    (topic,) = await make_topics("in", partitions=1)
    async with FeatureProducer(kafka_bootstrap, topic, id_prefix="g") as producer:
        ids = await producer.send_rows([[1.0, 2.0], [3.0, 4.0]])

    records = await read_topic(kafka_bootstrap, topic, 1)

    expected = (["g-0", "g-1"], [(), ()])
    assert expected == (ids, [tuple(r.headers) for r in records])


async def test_cli_run_sends_a_small_csv(
    kafka_bootstrap: str,
    make_topics: MakeTopics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`produce` on a 7-row CSV at 2 rows per request sends 4 records with stable ids."""
    (topic,) = await make_topics("in", partitions=2)
    path = tmp_path / "sample.csv"
    path.write_text("a,b,c\n" + "".join(f"{i},{i + 1},{i + 2}\n" for i in range(7)))
    parser = argparse.ArgumentParser(prog="streamscore")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "produce", "--file", str(path), "--topic", topic,
        "--bootstrap-servers", kafka_bootstrap, "--rows-per-request", "2", "--model", "m",
    ])  # fmt: skip

    code = await asyncio.to_thread(run, args)  # run() owns its event loop, as under the CLI

    records = await read_topic(kafka_bootstrap, topic, 2)
    expected_keys = [b"sample-0", b"sample-2", b"sample-4", b"sample-6"]
    expected_first_rows = [[0, 1, 2], [1, 2, 3]]
    assert (0, expected_keys) == (code, [r.key for r in records])
    assert expected_first_rows == decode_request(records[0].value).inputs[0].data.tolist()
    assert "sent 4 records, 7 rows to " + topic in capsys.readouterr().out
