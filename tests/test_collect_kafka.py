"""`streamscore collect` against a real broker: results and dead letters by hand, the CLI, its files."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from producer.collect import add_parser, run
from schemas import headers as h
from schemas.codec import encode_response
from schemas.tensors import as_tensor
from tests.conftest import MakeTopics
from tests.harness import Out, produce

pytestmark = pytest.mark.kafka


def result(request_id: str, label: list[int], p: list[list[float]]) -> Out:
    """A result record as the worker writes it: keyed by the request id, model headers set."""
    value = encode_response(
        id=request_id,
        model_name="iris",
        model_version="2",
        outputs=[as_tensor("label", np.array(label, dtype=np.int64)), as_tensor("p", np.array(p, dtype=np.float32))],
    )
    return Out(request_id.encode(), value, [(h.MODEL, b"iris"), (h.MODEL_VERSION, b"2")])


def dead_letter(request_id: str, message: str) -> Out:
    """A dead letter as the worker writes it: the request's key and value, plus dlt headers."""
    headers = [
        (h.DLT_EXCEPTION_MESSAGE, message.encode()),
        (h.DLT_STAGE, b"validate"),
        (h.DLT_ERROR, b"ValidationError"),
    ]
    return Out(request_id.encode(), orjson.dumps({"id": request_id, "inputs": []}), headers)


def collect_args(bootstrap: str, results: str, dead: str, out: Path, *extra: str) -> argparse.Namespace:
    """The parsed flags of `streamscore collect` against the test topics."""
    parser = argparse.ArgumentParser(prog="streamscore")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args([
        "collect", "--bootstrap-servers", bootstrap, "--results-topic", results,
        "--dead-letter-topic", dead, "--out", str(out), *extra,
    ])  # fmt: skip


async def test_collect_writes_sorted_csv_and_dead_letters(
    kafka_bootstrap: str, make_topics: MakeTopics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 rows at 2 per request (ids b-0, b-2, b-4): b-2 twice, b-4 dead-lettered, another batch's
    result in between; collect exits 0 with a sorted CSV, one dead letter and one duplicate."""
    results, dead = await make_topics("results", "dlt", partitions=2)
    await produce(kafka_bootstrap, results, [
        result("b-2", [1, 0], [[0.25, 0.75], [0.5, 0.5]]),
        result("other-0", [1], [[0.0, 1.0]]),
        result("b-0", [0, 1], [[1.0, 0.0], [0.125, 0.875]]),
        result("b-2", [0, 0], [[0.0, 0.0], [0.0, 0.0]]),
    ])  # fmt: skip
    await produce(kafka_bootstrap, dead, [dead_letter("b-4", "input 'x': shape [1, 3]")])
    rows = tmp_path / "b.csv"
    rows.write_text("".join(f"{i},{i}\n" for i in range(5)))
    out = tmp_path / "scored.csv"
    args = collect_args(kafka_bootstrap, results, dead, out, "--from-file", str(rows), "--rows-per-request", "2")

    code = await asyncio.to_thread(run, args)  # run() owns its event loop, as under the CLI

    expected_csv = (
        "id,row,model_version,label,p_0,p_1\n"
        "b-0,0,2,0,1.0,0.0\n"
        "b-0,1,2,1,0.125,0.875\n"
        "b-2,2,2,1,0.25,0.75\n"
        "b-2,3,2,0,0.5,0.5\n"
    )
    expected_dead = [
        {"key": "b-4", "row": 4, "stage": "validate", "error": "ValidationError", "message": "input 'x': shape [1, 3]"}
    ]
    assert (0, expected_csv) == (code, out.read_text())
    assert expected_dead == [
        orjson.loads(line) for line in (tmp_path / "scored.csv.dead.jsonl").read_bytes().splitlines()
    ]
    printed = capsys.readouterr().out
    assert "collected 2 results and 1 dead letters of 3 ids" in printed
    assert "dropped 1 duplicates" in printed


async def test_collect_jsonl_output(kafka_bootstrap: str, make_topics: MakeTopics, tmp_path: Path) -> None:
    """--expect 2 with a .jsonl out: one object per request, outputs in their shapes, in row order."""
    results, dead = await make_topics("results", "dlt", partitions=1)
    await produce(kafka_bootstrap, results, [result("j-1", [1], [[0.5, 0.5]]), result("j-0", [0], [[1.0, 0.0]])])
    out = tmp_path / "scored.jsonl"

    args = collect_args(kafka_bootstrap, results, dead, out, "--id-prefix", "j", "--expect", "2")

    code = await asyncio.to_thread(run, args)

    expected = [
        {"id": "j-0", "model_version": "2", "label": [0], "p": [[1.0, 0.0]]},
        {"id": "j-1", "model_version": "2", "label": [1], "p": [[0.5, 0.5]]},
    ]
    assert (0, expected) == (code, [orjson.loads(line) for line in out.read_bytes().splitlines()])
    assert not (tmp_path / "scored.jsonl.dead.jsonl").exists()


async def test_collect_times_out_naming_missing_ids(
    kafka_bootstrap: str, make_topics: MakeTopics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step by step: 1 of 4 results exists, --timeout 1; collect exits 1 within seconds naming 3 missing ids."""
    results, dead = await make_topics("results", "dlt", partitions=1)
    await produce(kafka_bootstrap, results, [result("m-2", [1], [[0.5, 0.5]])])
    out = tmp_path / "scored.jsonl"
    args = collect_args(kafka_bootstrap, results, dead, out, "--id-prefix", "m", "--expect", "4", "--timeout", "1")

    started = time.monotonic()
    code = await asyncio.to_thread(run, args)
    elapsed = time.monotonic() - started

    error = capsys.readouterr().err
    assert (1, True) == (code, elapsed < 15)
    assert "3 ids have neither a result nor a dead letter (m-0, m-1, m-3)" in error
    assert ["m-2"] == [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
