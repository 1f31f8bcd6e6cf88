"""Helpers for the real-broker tests: produce records, read topics back, run workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas import headers as h
from schemas.codec import InferenceResponse, decode_response
from streamscore.cli import main as cli
from worker.runner import Worker
from worker.settings import Settings, setting_name

REPO = Path(__file__).resolve().parent.parent
Header = tuple[str, bytes]


@dataclass(frozen=True)
class Out:
    """A record to produce: key, value, headers, and a partition if it must be pinned."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[Header] = ()
    partition: int | None = None


async def produce(bootstrap: str, topic: str, records: Iterable[Out], **options: Any) -> None:
    """Produce records and wait until the broker acknowledged all of them.

    `options` go to the producer (`compression_type`, `max_request_size`, ...). A record with
    neither key nor value (a tombstone, as `kcat -Z` sends it) goes in a batch of its own: aiokafka's
    `send` refuses one.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
    await producer.start()
    try:
        futures = [await _send(producer, topic, r) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _send(producer: AIOKafkaProducer, topic: str, r: Out) -> asyncio.Future[Any]:
    if r.key is None and r.value is None:
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None, headers=list(r.headers))
        return await producer.send_batch(batch, topic, partition=r.partition or 0)  # type: ignore[no-any-return]
    return await producer.send(topic, value=r.value, key=r.key, headers=list(r.headers), partition=r.partition)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the start: until `expect` are read, or nothing comes for `idle_s`.

    `isolation_level="read_uncommitted"` reads the records of aborted transactions too.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if batch:
                last = time.monotonic()
            if expect is not None and len(records) >= expect:
                # read a little longer: a count above `expect` means duplicates
                if time.monotonic() - last >= 0.5:
                    break
            elif expect is None and time.monotonic() - last >= idle_s:
                break
    finally:
        await consumer.stop()
    return records


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The offsets `group` has committed on `topic`, by partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The end offset of every partition of `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def responses(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[InferenceResponse]:
    """The V2 responses in result records (JSON, or with binary outputs after the JSON header)."""
    return [decode_response(r.value, header_length=h.header_length(r.headers)) for r in records if r.value is not None]


def header(record: ConsumerRecord[bytes, bytes], name: str) -> bytes | None:
    """The last value of a header, or None."""
    found = None
    for key, value in record.headers:
        if key == name:
            found = value
    return found


def stage_of(record: ConsumerRecord[bytes, bytes]) -> str:
    """The stage a dead letter failed at."""
    raw = header(record, h.DLT_STAGE)
    assert raw is not None, f"dead letter without {h.DLT_STAGE}: {record.headers}"
    return raw.decode()


def worker_settings_for(
    bootstrap: str, topics: dict[str, str], model_root: Path | str, group: str, **changes: Any
) -> Settings:
    """A worker on a test's topics ("input", "results", "dead"), its group and model root, the mlp its
    default model, logs on the console; `changes` set the rest."""
    return Settings(
        bootstrap_servers=bootstrap,
        input_topic=topics["input"],
        results_topic=topics["results"],
        dead_letter_topic=topics["dead"],
        group_id=group,
        model_root=str(model_root),
        model_name="mlp",
        log_format="console",
        **changes,
    )


async def run_burst(settings: Settings, timeout_s: float = 120.0) -> int:
    """Run one worker in this process in burst mode until its partitions are drained."""
    worker = Worker(settings.replace(burst=True))
    return await asyncio.wait_for(worker.run(), timeout_s)


async def model_cli(settings: Settings, *args: str) -> int:
    """Run `streamscore model ...` against a test's registry, broker and control topic."""
    argv = [
        "model",
        "--model-root",
        settings.model_root,
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--control-topic",
        settings.control_topic,
        *args,
    ]
    return await asyncio.to_thread(cli, argv)


def worker_env(settings: dict[str, Any]) -> dict[str, str]:
    """The environment of a `streamscore worker` subprocess configured with `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["PYTHONPATH"] = str(REPO)
    for name, value in settings.items():
        env[setting_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def start_worker(settings: dict[str, Any], log_path: Path, *, new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start `streamscore worker` as a subprocess, its logs in `log_path`.

    `new_session`: in a process group of its own (whose id is its pid), so a test can signal the group.
    """
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore", "worker"],
            cwd=REPO,
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


def worker_children(parent: int) -> list[int]:
    """The worker processes a supervisor started (not multiprocessing's helpers)."""
    pids: list[int] = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
    return pids


def stop_worker(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM a worker subprocess and wait for its exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `condition()` holds (what the test started runs meanwhile); TimeoutError past `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.002)
