"""A worker serving from a registry in an object store, on the real broker and the local S3 server."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from artifacts.registry import Registry
from demo.models import make_mlp
from schemas.codec import encode_request
from tests.conftest import MakeTopics
from tests.harness import Out, model_cli, produce, read_topic, responses, run_burst, worker_settings_for

pytestmark = pytest.mark.kafka


async def test_a_worker_scores_with_the_version_promoted_in_the_store(
    kafka_bootstrap: str, make_topics: MakeTopics, unique_group: str, s3_root: str, tmp_path: Path
) -> None:
    """Scenario:
    1. `model push` stores mlp versions 1 and 2 in the bucket; `model list` and `show` read them back.
    2. `model promote mlp 1` (not the highest version) on the control topic.
    3. A burst worker whose model root is the s3:// URL scores 30 requests.
    Every request has one result, made by version 1, and version 1's files are in the worker's cache.
    """
    names = await make_topics("in", "out", "in.DLT")
    topics = {"input": names[0], "results": names[1], "dead": names[2]}
    cache = tmp_path / "cache"
    settings = worker_settings_for(
        kafka_bootstrap,
        topics,
        s3_root,
        unique_group,
        control_topic=f"control-{uuid.uuid4().hex[:8]}",
        model_cache=str(cache),
    )
    for version, scale in (("1", 1.0), ("2", 3.0)):
        model = str(make_mlp(tmp_path / f"mlp-{version}.onnx", scale=scale))
        assert 0 == await model_cli(settings, "push", model, "--name", "mlp", "--version", version)
    assert 0 == await model_cli(settings, "list")
    assert 0 == await model_cli(settings, "show", "mlp")
    assert 0 == await model_cli(settings, "promote", "mlp", "1")
    rows = np.random.default_rng(3).random((30, 8), dtype=np.float32)
    await produce(
        kafka_bootstrap,
        topics["input"],
        [Out(None, encode_request({"x": rows[i : i + 1]}, id=f"r{i}")) for i in range(30)],
    )

    assert 0 == await run_burst(settings)

    results = responses(await read_topic(kafka_bootstrap, topics["results"], expect=30))
    assert {f"r{i}" for i in range(30)} == {r.id for r in results}
    assert {"1"} == {r.model_version for r in results}
    manifest = Registry.at(s3_root).manifest("mlp", "1")
    assert {manifest.files[manifest.artifact]} == {p.name for p in cache.iterdir()}
