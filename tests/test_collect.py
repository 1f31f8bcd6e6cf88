"""`streamscore collect` without a broker: ids, flattening, de-duplication, the loop with a fake source."""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from producer.collect import CollectOptions, add_parser, collect, count_requests, run
from producer.flatten import Columns, FlattenError, jsonl_object, read_outputs
from producer.ledger import Collector, Expected, parse_row
from schemas import headers as h
from schemas.binary import BinaryOutputs
from schemas.codec import ResponseEncoder, encode_response
from schemas.records import InputRecord
from schemas.tensors import as_tensor
from tests.factories import make_record


def binary_response(request_id: str, **outputs: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    """`response`, every output as binary data: the value, and its record headers (the JSON header's length)."""
    tensors = {name: as_tensor(name, np.asarray(value)) for name, value in outputs.items()}
    encoder = ResponseEncoder("m", "3", tensors, whole=True)
    value, length = encoder.encode_binary(
        request_id, 0, 0, list(tensors), BinaryOutputs(default=True)
    )  # whole: every row
    return value, [(h.MODEL, b"m"), (h.BINARY_HEADER_LENGTH, str(length).encode())]


def response(request_id: str, **outputs: Any) -> bytes:
    """A V2 response of model m version 3 with `outputs` ({name: array-like})."""
    tensors = [as_tensor(name, np.asarray(value)) for name, value in outputs.items()]
    return encode_response(id=request_id, model_name="m", model_version="3", outputs=tensors)


def dead_headers(stage: str, message: str) -> list[tuple[str, bytes]]:
    """The headers the worker adds to a dead letter that matter to collect."""
    return [(h.DLT_STAGE, stage.encode()), (h.DLT_ERROR, b"DecodeError"), (h.DLT_EXCEPTION_MESSAGE, message.encode())]


def lines_of(path: Path) -> list[Any]:
    """The objects of a JSON Lines file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The namespace of `streamscore collect <argv>`."""
    parser = argparse.ArgumentParser(prog="streamscore")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["collect", *argv])


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [("p-0", 0), ("p-120", 120), ("q-1", None), ("p-", None), ("p-x1", None), ("p-007", None), ("p-1-2", None)],
)
def test_parse_row_reads_only_prefix_dash_index(request_id: str, expected: int | None) -> None:
    """Only `<prefix>-<unpadded decimal>` is an id of the batch."""
    assert expected == parse_row(request_id, "p")


def test_parse_row_does_not_confuse_prefixes_sharing_a_start() -> None:
    """Prefix `a` does not claim the ids of prefix `a-b`."""
    assert (None, 3) == (parse_row("a-b-3", "a"), parse_row("a-b-3", "a-b"))


def test_expected_maps_ids_to_request_numbers() -> None:
    """At 3 rows per request, ids are multiples of 3 below 3 * count."""
    expected = Expected("p", 4, 3)
    numbers = [expected.number_of(i) for i in ("p-0", "p-3", "p-9", "p-4", "p-12")]
    assert ([0, 1, 3, None, None], "p-6") == (numbers, expected.id_of(2))


def test_count_requests_counts_rows_like_produce(tmp_path: Path) -> None:
    """7 data rows (after a header) at 2 per request make 4 requests."""
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(7)))
    assert 4 == count_requests(path, 2)


def test_csv_columns_flatten_multi_row_and_multi_column_outputs() -> None:
    """A 2-row request with a [2, 3] output gives 2 lines, each with columns p_0 .. p_2."""
    body = orjson.loads(response("p-4", label=[[1], [0]], p=[[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    outputs = read_outputs(body)
    columns = Columns.of(outputs)

    expected_header = ["id", "row", "model_version", "label", "p_0", "p_1", "p_2"]
    expected_rows = [["p-4", 4, "3", 1, 0.1, 0.2, 0.7], ["p-4", 5, "3", 0, 0.5, 0.25, 0.25]]
    assert (expected_header, expected_rows) == (columns.header(), columns.rows("p-4", 4, "3", outputs))


def test_csv_columns_refuse_a_result_of_another_layout() -> None:
    """A result whose output width differs from the first result's is a FlattenError."""
    columns = Columns.of(read_outputs(orjson.loads(response("p-0", p=[[0.1, 0.9]]))))
    other = read_outputs(orjson.loads(response("p-1", p=[[0.1, 0.2, 0.7]])))
    with pytest.raises(FlattenError, match="1 rows of 3 values"):
        columns.rows("p-1", 1, "3", other)


def test_read_outputs_refuses_data_that_does_not_fill_the_shape() -> None:
    """shape [2, 2] with 3 values is a FlattenError naming the output."""
    body = {"outputs": [{"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}
    with pytest.raises(FlattenError, match="'y'"):
        read_outputs(body)


def test_jsonl_object_keeps_each_output_in_its_shape() -> None:
    """Outputs become keys holding nested data; one called `id` becomes `output_id`."""
    body = orjson.loads(response("p-0", y=[[1.5, 2.5]], id=[7]))
    expected = {"id": "p-0", "model_version": "3", "y": [[1.5, 2.5]], "output_id": [7]}
    assert expected == jsonl_object("p-0", body)


def test_collector_keeps_the_first_result_and_counts_duplicates(tmp_path: Path) -> None:
    """Step by step: p-1 arrives, p-1 again (different value), p-0 dead-lettered, p-0's result
    after a replay; the output holds rows in order, the first p-1 wins, nothing dead remains."""
    collector = Collector(Expected("p", 2), tmp_path / "out.jsonl")
    collector.add_result(b"p-1", response("p-1", y=[[1.0]]))
    collector.add_result(b"p-1", response("p-1", y=[[9.0]]))
    collector.add_dead_letter(b"p-0", b"{}", dead_headers("decode", "bad"))
    collector.add_dead_letter(b"p-0", b"{}", dead_headers("decode", "bad"))
    collector.add_result(b"p-0", response("p-0", y=[[0.0]]))
    collector.add_result(b"other-0", response("other-0", y=[[5.0]]))
    collector.add_result(b"p-2", response("p-2", y=[[5.0]]))

    dead_path = collector.write()
    summary = collector.summary(1.0)
    collector.close()

    expected_lines = [
        {"id": "p-0", "model_version": "3", "y": [[0.0]]},
        {"id": "p-1", "model_version": "3", "y": [[1.0]]},
    ]
    assert expected_lines == lines_of(tmp_path / "out.jsonl")
    assert (None, 2, 0, 2, 1, 1) == (
        dead_path,
        summary.results,
        summary.dead_letters,
        summary.duplicates,
        summary.superseded,
        summary.outside,
    )
    assert [] == sorted(p.name for p in tmp_path.iterdir() if p.name != "out.jsonl")


def test_collector_writes_dead_letters_and_unreadable_results_beside_the_csv(tmp_path: Path) -> None:
    """A dead letter and an unreadable result go to <out>.dead.jsonl in row order; the CSV keeps the rest."""
    collector = Collector(Expected("p", 3, 2), tmp_path / "out.csv")
    collector.add_result(b"p-4", b"not json")
    collector.add_result(b"p-0", response("p-0", y=[[1.0], [2.0]]))
    collector.add_dead_letter(b"p-2", b"{}", dead_headers("validate", "shape [2, 5]"))

    dead_path = collector.write()
    collector.close()

    expected_csv = "id,row,model_version,y\np-0,0,3,1.0\np-0,1,3,2.0\n"
    assert expected_csv == (tmp_path / "out.csv").read_text()
    assert tmp_path / "out.csv.dead.jsonl" == dead_path
    dead = lines_of(dead_path)
    dead[1].pop("message")  # orjson's wording varies by version
    expected_dead = [
        {"key": "p-2", "row": 2, "stage": "validate", "error": "DecodeError", "message": "shape [2, 5]"},
        {"key": "p-4", "row": 4, "stage": "collect", "error": "JSONDecodeError"},
    ]
    assert expected_dead == dead


@pytest.mark.parametrize("out", ["out.csv", "out.jsonl"])
def test_binary_results_are_written_as_their_json_form(tmp_path: Path, out: str) -> None:
    """Results with binary outputs (FP32, INT64, BOOL, BYTES; read with their length header) give
    the same file as the same results in JSON."""
    outputs: dict[str, Any] = {
        "p": np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32),
        "label": np.array([1, 0], dtype=np.int64),
        "flag": np.array([True, False]),
        "name": np.array(["dog", "cat"], dtype=object),
    }
    binary, json = (Collector(Expected(prefix, 1, 2), tmp_path / f"{prefix}-{out}") for prefix in ("b", "j"))

    binary.add_result(b"b-0", *binary_response("b-0", **outputs))
    json.add_result(b"j-0", response("j-0", **outputs))
    for collector in (binary, json):
        collector.write()
        collector.close()

    written = [(tmp_path / f"{prefix}-{out}").read_text() for prefix in ("b", "j")]
    assert written[1].replace("j-0", "b-0") == written[0]
    assert "0.1" in written[0]  # FP32 values as JSON writes them, not 0.10000000149011612


def test_a_binary_result_with_a_bad_length_header_is_dead_at_collect(tmp_path: Path) -> None:
    """A length header that is no number, or does not fit the value: the result is a dead letter at stage collect."""
    collector = Collector(Expected("p", 2), tmp_path / "out.jsonl")
    value, _ = binary_response("p-0", y=[[1.0]])

    collector.add_result(b"p-0", value, [(h.BINARY_HEADER_LENGTH, b"twelve")])
    collector.add_result(b"p-1", value, [(h.BINARY_HEADER_LENGTH, str(len(value) + 1).encode())])
    dead_path = collector.write()
    collector.close()

    assert dead_path is not None
    assert [("collect", "DecodeError")] * 2 == [(d["stage"], d["error"]) for d in lines_of(dead_path)]


class FakeSource:
    """Hands out prepared batches, then nothing; each poll moves the fake clock on by one second."""

    def __init__(self, batches: list[list[InputRecord]]) -> None:
        self.batches = batches
        self.now = 0.0

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Mapping[Any, Any]:
        self.now += 1.0
        return {"tp": self.batches.pop(0)} if self.batches else {}

    def clock(self) -> float:
        return self.now


async def test_collect_stops_once_every_id_is_answered(tmp_path: Path) -> None:
    """Two batches answer both ids: collect returns after the second poll, nothing missing."""
    results, dead = "res", "dlt"
    source = FakeSource([
        [make_record(response("p-1", y=[[1.0]]), topic=results, key=b"p-1")],
        [make_record(b"{}", topic=dead, key=b"p-0", headers=dead_headers("infer", "boom"))],
        [make_record(response("p-0", y=[[0.0]]), topic=results, key=b"p-0")],
    ])  # fmt: skip
    options = CollectOptions(Expected("p", 2), tmp_path / "o.jsonl", results_topic=results, dead_letter_topic=dead)

    summary = await collect(options, source=source, clock=source.clock)

    assert (1, 1, 0, 2.0) == (summary.results, summary.dead_letters, summary.missing_count, summary.seconds)
    assert 1 == len(source.batches)


async def test_collect_gives_up_after_timeout_without_progress(tmp_path: Path) -> None:
    """One of three ids answered, then silence: after timeout_s polls collect returns the missing ids."""
    source = FakeSource([[make_record(response("p-1", y=[[1.0]]), topic="res", key=b"p-1")]])
    options = CollectOptions(Expected("p", 3), tmp_path / "o.csv", results_topic="res", timeout_s=5.0)
    stream = io.StringIO()

    summary = await collect(options, source=source, clock=source.clock, progress_stream=stream)

    assert (2, ["p-0", "p-2"], 6.0) == (summary.missing_count, summary.missing, source.now)
    assert "id,row,model_version,y\np-1,1,3,1.0\n" == (tmp_path / "o.csv").read_text()


async def test_collect_keeps_reading_a_backlog_of_other_batches_past_the_timeout(tmp_path: Path) -> None:
    """Eight polls of old records of another batch (timeout 5 s), then ours: collect completes."""
    other = [make_record(response("q-0", y=[[1.0]]), topic="res", key=b"q-0")]
    source = FakeSource([other] * 8 + [[make_record(response("p-0", y=[[1.0]]), topic="res", key=b"p-0")]])
    options = CollectOptions(Expected("p", 1), tmp_path / "o.jsonl", results_topic="res", timeout_s=5.0)

    summary = await collect(options, source=source, clock=source.clock)

    assert (1, 0, 9.0) == (summary.results, summary.missing_count, source.now)


def test_run_refuses_an_unknown_output_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out results.parquet exits 2 before connecting, saying which extensions work."""
    args = parse(["--id-prefix", "p", "--expect", "3", "--out", str(tmp_path / "results.parquet")])
    assert 2 == run(args)
    assert ".jsonl or .csv" in capsys.readouterr().err


def test_from_file_derives_count_and_prefix(tmp_path: Path) -> None:
    """--from-file rows.csv --rows-per-request 2 expects produce's ids rows-0, rows-2, ..."""
    path = tmp_path / "rows.csv"
    path.write_text("".join(f"{i},{i}\n" for i in range(5)))
    args = parse(["--from-file", str(path), "--rows-per-request", "2", "--out", str(tmp_path / "o.jsonl")])
    assert Expected("rows", 3, 2) == CollectOptions.from_args(args).expected
