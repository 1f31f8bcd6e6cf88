"""A worker's start on a fresh broker, through its JSON logs: no line reads as a failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from broker import local
from demo.models import install_model, make_mlp
from schemas.codec import encode_request
from tests.harness import REPO, Out, produce, read_topic, start_worker
from transport.admin import create_topics

pytestmark = pytest.mark.kafka


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[str]:
    """A broker of this test's own, just started: no consumer group has ever joined it."""
    config = local.BrokerConfig(
        home=tmp_path / "kafka",
        port=local.free_port(),
        controller_port=local.free_port(),
        libs=REPO / ".kafka" / "libs",
    )
    try:
        yield local.start(config, timeout_s=120.0)
    finally:
        local.stop(config)


async def test_the_first_group_on_a_fresh_broker_logs_no_error(fresh_broker: str, tmp_path: Path) -> None:
    """Scenario:
    1. A worker (JSON logs, burst mode) is the first consumer group on a fresh broker, so the
       group coordinator loads while it joins (aiokafka logs "Group Coordinator Request failed").
    2. It scores its one record and exits.
    Exit 0, the result is written, and no log line is at error level or above."""
    await create_topics(fresh_broker, ["in", "out", "in.DLT"], 1)
    value = encode_request({"x": np.zeros((1, 8), dtype=np.float32)}, id="r")
    await produce(fresh_broker, "in", [Out(b"r", value)])
    install_model(tmp_path / "models", "mlp", "1", make_mlp)
    settings = {
        "bootstrap_servers": fresh_broker,
        "input_topic": "in",
        "results_topic": "out",
        "control_topic": "",
        "model_root": str(tmp_path / "models"),
        "model_name": "mlp",
        "log_format": "json",
        "burst": True,
    }
    log = tmp_path / "worker.log"

    code = await asyncio.to_thread(start_worker(settings, log).wait, 120)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert 0 == code, log.read_text()
    assert 1 == len(await read_topic(fresh_broker, "out", expect=1))
    assert [] == [line for line in lines if line.get("level") in ("error", "critical")]
    assert any(line.get("event") == "worker_drained" for line in lines)
