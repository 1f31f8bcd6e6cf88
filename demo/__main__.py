"""`make demo`: the main job end to end on the embedded local broker.

Starts the local Kafka broker, creates the topics, builds a small scikit-learn classifier as
ONNX, runs `streamscore worker` with two processes, publishes a CSV of feature rows plus a few
bad records, prints the results and the dead letters, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from artifacts.registry import Registry
from broker import local
from demo.models import make_sklearn_classifier, sklearn_sample_rows
from producer.client import FeatureProducer
from registry.push import push_model
from schemas import headers as h
from schemas.codec import decode_response
from schemas.errors import StreamscoreError
from transport.admin import create_topics

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"
INPUT, RESULTS, DEAD = "demo.requests", "demo.results", "demo.requests.DLT"
ROWS = 40

# (key, value, headers): what a buggy producer might send
BAD_RECORDS = [
    ("bad-not-json", b"this is not JSON", None),
    ("bad-wrong-shape", b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}', None),
    ("bad-nan", b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,NaN,3,4]}]}', None),
    (
        "bad-unknown-model",
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}',
        [(h.MODEL, b"no-such-model")],
    ),
]


async def publish_bad_records(bootstrap: str) -> None:
    async with FeatureProducer(bootstrap, INPUT) as producer:
        for key, value, headers in BAD_RECORDS:
            await producer.send_request(value, key=key, headers=headers)


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    config = local.BrokerConfig(home=REPO / ".kafka", libs=REPO / ".kafka" / "libs")
    started_broker = not local.status(config).running
    say("starting the local Kafka broker" if started_broker else "using the local Kafka broker already running")
    bootstrap = local.start(config, timeout_s=120.0)
    worker: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(create_topics(bootstrap, [INPUT, RESULTS, DEAD], partitions=4))
        models = WORK / "registry"
        registry = Registry.at(models)
        if not registry.has("classifier", "1"):  # versions are immutable: push once
            source = make_sklearn_classifier(WORK / "classifier.onnx")
            push_model(registry, source, name="classifier", version="1", metadata={"demo": True})
        manifest = registry.manifest("classifier", "1")
        say(
            f"a scikit-learn classifier as ONNX in the registry {models.relative_to(REPO)}: classifier version 1, "
            f"sha256 {manifest.sha256[:12]}"
        )
        csv = WORK / "rows.csv"
        rows = sklearn_sample_rows(ROWS, seed=1)
        np.savetxt(csv, rows, delimiter=",", header="f0,f1,f2,f3", comments="", fmt="%.5f")
        metrics_port = local.free_port()
        worker = start_worker(bootstrap, models, metrics_port)
        results, dead = asyncio.run(publish_and_collect(bootstrap, csv))
        show(results, dead)
        show_metrics(metrics_port)
        return 0 if len(results) == ROWS and len(dead) == len(BAD_RECORDS) else 1
    finally:
        if worker is not None:
            say("stopping the worker (SIGTERM: drain, commit, exit)")
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        if started_broker:
            say("stopping the local Kafka broker")
            local.stop(config)


def start_worker(bootstrap: str, models: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    say(
        "starting `streamscore worker --processes 2` (logs in .demo/worker.log; metrics, /healthz and /readyz "
        f"on http://127.0.0.1:{metrics_port})"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env.update(
        STREAMSCORE_BOOTSTRAP_SERVERS=bootstrap,
        STREAMSCORE_INPUT_TOPIC=INPUT,
        STREAMSCORE_RESULTS_TOPIC=RESULTS,
        STREAMSCORE_DEAD_LETTER_TOPIC=DEAD,
        STREAMSCORE_GROUP_ID="demo",
        STREAMSCORE_MODEL_ROOT=str(models),
        STREAMSCORE_PROCESSES="2",
        STREAMSCORE_CONTROL_TOPIC="demo.control",
        STREAMSCORE_LOG_FORMAT="json",
        STREAMSCORE_METRICS_PORT=str(metrics_port),
    )
    with (WORK / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamscore", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def publish_and_collect(
    bootstrap: str, csv: Path, timeout_s: float = 90.0
) -> tuple[list[ConsumerRecord[bytes, bytes]], list[ConsumerRecord[bytes, bytes]]]:
    """Publish the CSV and the bad records; read what comes back from where the topics ended."""
    consumer = AIOKafkaConsumer(RESULTS, DEAD, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest")
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        for partition in consumer.assignment():
            await consumer.position(partition)  # start after what earlier runs left on the topics
        say(f"publishing {ROWS} rows from {csv.relative_to(REPO)} and {len(BAD_RECORDS)} bad records")
        command = [sys.executable, "-m", "streamscore", "produce", "--file", str(csv), "--topic", INPUT]
        await asyncio.to_thread(
            subprocess.run, [*command, "--bootstrap-servers", bootstrap, "--id-prefix", "row"], check=True
        )
        await publish_bad_records(bootstrap)
        say("waiting for every record to come back as a result or a dead letter")
        return await collect(consumer, ROWS + len(BAD_RECORDS), timeout_s)
    finally:
        await consumer.stop()


async def collect(
    consumer: AIOKafkaConsumer, expected: int, timeout_s: float
) -> tuple[list[ConsumerRecord[bytes, bytes]], list[ConsumerRecord[bytes, bytes]]]:
    results: list[ConsumerRecord[bytes, bytes]] = []
    dead: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(results) + len(dead) < expected and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(timeout_ms=500)).items():
            (results if tp.topic == RESULTS else dead).extend(records)
    return results, dead


def show(results: list[ConsumerRecord[bytes, bytes]], dead: list[ConsumerRecord[bytes, bytes]]) -> None:
    say(f"{len(results)} results on {RESULTS} (first 8):")
    print(f"  {'id':<10} {'version':<8} {'label':<6} probabilities")
    for record in sorted(results, key=lambda r: int(r.key.split(b"-")[1]))[:8]:
        response = decode_response(record.value, header_length=h.header_length(record.headers))
        label = int(response.output("output_label").data[0])
        probs = [round(float(p), 3) for p in response.output("output_probability").data[0]]
        print(f"  {response.id:<10} {response.model_version:<8} {label:<6} {probs}")
    say(f"{len(dead)} dead letters on {DEAD}:")
    for record in dead:
        headers = dict(record.headers)
        print(
            f"  {record.key.decode():<18} stage={headers[h.DLT_STAGE].decode():<9} "
            f"{headers[h.DLT_EXCEPTION_MESSAGE].decode()[:90]}"
        )


def show_metrics(port: int) -> None:
    """A few lines of the workers' Prometheus metrics, as a scrape sees them."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as error:
        say(f"the metrics at {url} did not answer: {error}")
        return
    say(f"the workers' metrics at {url} (a few of them; /healthz and /readyz beside):")
    wanted = ("streamscore_results_total", "streamscore_dead_letters_total", "streamscore_records_consumed_total")
    for line in text.splitlines():
        if line.startswith(wanted):
            print(f"  {line}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StreamscoreError as error:
        print(f"demo: {error}", file=sys.stderr)
        sys.exit(1)
