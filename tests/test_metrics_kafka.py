"""Metrics and health of `streamscore worker --processes 2` on the real broker: one endpoint for both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import local
from broker.local import free_port
from demo.models import install_model, make_mlp
from schemas.codec import encode_request
from tests.harness import REPO, Out, produce, start_worker, stop_worker, worker_env
from transport.admin import create_topics
from worker.health import BROKER_BOUND_S
from worker.monitor import PROBE_TIMEOUT_S

pytestmark = pytest.mark.kafka

PARTITIONS = 3
GOOD = 30
POISON = [b"not json", b"", encode_request({"x": np.zeros((1, 3), np.float32)}, id="narrow")]
POISON_STAGES = {"decode": 2, "validate": 1}


def get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the endpoint: status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, repr(error)


def scrape(port: int) -> dict[str, Counter[str]]:
    """Results summed over every label, and dead letters by stage, from one scrape of /metrics."""
    status, text = get(port, "/metrics")
    assert 200 == status, text
    found: dict[str, Counter[str]] = {"results": Counter(), "dead_letters": Counter(), "consumed": Counter()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamscore_results_total":
                found["results"]["all"] += int(sample.value)
            elif sample.name == "streamscore_dead_letters_total":
                found["dead_letters"][sample.labels["stage"]] += int(sample.value)
            elif sample.name == "streamscore_records_consumed_total":
                found["consumed"]["all"] += int(sample.value)
    return found


def gauge(port: int, name: str) -> float | None:
    """The value of an unlabelled gauge in one scrape of /metrics (None when absent or unreachable)."""
    status, text = get(port, "/metrics")
    if status != 200:
        return None
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return values[0] if values else None


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


async def test_two_processes_serve_one_endpoint_with_their_summed_counts(
    kafka_bootstrap: str,
    make_topics,
    unique_group: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Step by step: start 2 worker processes with a metrics port; wait until /readyz says ready; send 30
    good requests and 3 poison records; one scrape of the supervisor's port sums both processes: 30
    results, 2 decode and 1 validate dead letters; /healthz and /readyz answer 200; `worker --check`
    exits 0; on SIGTERM the worker exits 0."""
    topic, results, dead = await make_topics("in", "out", "in.DLT", partitions=PARTITIONS)
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    port = free_port()
    settings = {
        "bootstrap_servers": kafka_bootstrap,
        "input_topic": topic,
        "results_topic": results,
        "dead_letter_topic": dead,
        "group_id": unique_group,
        "control_topic": "",
        "model_root": str(root),
        "model_name": "mlp",
        "processes": 2,
        "metrics_port": port,
        "log_format": "json",
    }
    process = start_worker(settings, tmp_path / "worker.log")
    try:
        await asyncio.to_thread(wait_for, lambda: get(port, "/readyz")[0] == 200, 90, "/readyz 200")
        rows = np.random.default_rng(0).random((GOOD, 8), dtype=np.float32)
        good = [Out(f"r{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"r{i}")) for i in range(GOOD)]
        await produce(kafka_bootstrap, topic, [*good, *(Out(b"poison", value) for value in POISON)])

        def counted() -> bool:
            found = scrape(port)
            return found["results"]["all"] + sum(found["dead_letters"].values()) >= GOOD + len(POISON)

        await asyncio.to_thread(wait_for, counted, 60, "every outcome counted")
        found = await asyncio.to_thread(scrape, port)
        assert GOOD == found["results"]["all"]
        assert POISON_STAGES == dict(found["dead_letters"])
        assert GOOD + len(POISON) == found["consumed"]["all"]
        assert 200 == (await asyncio.to_thread(get, port, "/healthz"))[0]
        assert 200 == (await asyncio.to_thread(get, port, "/readyz"))[0]
        check = subprocess.run(
            [sys.executable, "-m", "streamscore", "worker", "--check", "--metrics-port", str(port)],
            cwd=REPO,
            env=worker_env({}),
            capture_output=True,
            timeout=30,
        )
        assert 0 == check.returncode, check.stdout
    finally:
        code = await asyncio.to_thread(stop_worker, process)
    assert 0 == code, (tmp_path / "worker.log").read_text()[-3000:]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[local.BrokerConfig, str]]:
    """A broker of this test's own, which the test stops (the session's broker is shared)."""
    config = local.BrokerConfig(
        home=tmp_path / "kafka",
        port=local.free_port(),
        controller_port=local.free_port(),
        libs=REPO / ".kafka" / "libs",
    )
    try:
        yield config, local.start(config, timeout_s=120.0)
    finally:
        local.stop(config)


async def test_one_process_is_not_ready_while_its_broker_is_down(
    own_broker: tuple[local.BrokerConfig, str], tmp_path: Path
) -> None:
    """Step by step: one worker process (no supervisor: it serves the endpoint itself) on a broker of its
    own is ready, `streamscore_ready` 1; the broker stops; within the broker bound plus a probe, /readyz
    answers 503 saying the broker is unreachable, `streamscore_ready` reads 0 and `worker --check` exits 1
    with that line, while /healthz stays 200 and `streamscore_healthy` 1 (the loop is alive and keeps
    polling); the broker starts again on the same ports; /readyz answers 200 and `streamscore_ready` 1."""
    config, bootstrap = own_broker
    await create_topics(bootstrap, ["in", "out", "in.DLT"], 2)
    install_model(tmp_path / "models", "mlp", "1", make_mlp)
    port = free_port()
    settings = {
        "bootstrap_servers": bootstrap,
        "input_topic": "in",
        "results_topic": "out",
        "control_topic": "",
        "model_root": str(tmp_path / "models"),
        "model_name": "mlp",
        "metrics_port": port,
        "shutdown_grace_s": 5,
        "log_format": "json",
    }
    process = start_worker(settings, tmp_path / "worker.log")
    try:
        await asyncio.to_thread(wait_for, lambda: get(port, "/readyz")[0] == 200, 90, "/readyz 200")
        await asyncio.to_thread(wait_for, lambda: 1 == gauge(port, "streamscore_ready"), 10, "ready gauge 1")
        await asyncio.to_thread(local.stop, config)

        bound = BROKER_BOUND_S + 2 * PROBE_TIMEOUT_S + 10
        await asyncio.to_thread(wait_for, lambda: get(port, "/readyz")[0] == 503, bound, "/readyz 503")
        assert "broker unreachable" in (await asyncio.to_thread(get, port, "/readyz"))[1]
        await asyncio.to_thread(wait_for, lambda: 0 == gauge(port, "streamscore_ready"), 10, "ready gauge 0")
        assert 200 == (await asyncio.to_thread(get, port, "/healthz"))[0]
        assert 1 == await asyncio.to_thread(gauge, port, "streamscore_healthy")
        check = subprocess.run(
            [sys.executable, "-m", "streamscore", "worker", "--check", "--metrics-port", str(port)],
            cwd=REPO,
            env=worker_env({}),
            capture_output=True,
            timeout=30,
        )
        assert 1 == check.returncode
        assert check.stdout.decode().startswith("not ready: broker unreachable"), check.stdout

        await asyncio.to_thread(local.start, config, timeout_s=120.0)
        await asyncio.to_thread(wait_for, lambda: get(port, "/readyz")[0] == 200, 90, "/readyz 200 again")
        await asyncio.to_thread(wait_for, lambda: 1 == gauge(port, "streamscore_ready"), 10, "ready gauge 1 again")
    finally:
        process.terminate()  # its exit code is moot (the broker may be gone: the last commit cannot succeed)
        await asyncio.to_thread(process.wait, 60)
