"""Unit tests of the producer without a broker: file readers, and FeatureProducer over a fake client."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.cli import Progress, add_parser, run
from producer.client import FeatureProducer, make_ids
from producer.files import ReadyRequest, format_of, read_chunks
from schemas import headers as h
from schemas.codec import decode_request
from schemas.errors import ConfigError, ProduceError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def arrays_of(chunks: Any) -> list[np.ndarray[Any, Any]]:
    return [c for c in chunks if not isinstance(c, ReadyRequest)]


def rows_of(chunks: Any) -> np.ndarray[Any, Any]:
    return np.concatenate(arrays_of(chunks))


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_with_header_skips_it(tmp_path: Path) -> None:
    """A first line without numbers is a header and is not sent as a row."""
    path = write(tmp_path / "f.csv", "a,b,c\n1,2,3\n4.5,-5,6e2\n")
    expected = np.array([[1, 2, 3], [4.5, -5, 600]])
    np.testing.assert_array_equal(expected, rows_of(read_chunks(path)))


def test_csv_without_header_keeps_first_row(tmp_path: Path) -> None:
    """A first line of numbers is data; blank lines are skipped."""
    path = write(tmp_path / "f.csv", "1,2\n\n3,4\n")
    np.testing.assert_array_equal(np.array([[1, 2], [3, 4]]), rows_of(read_chunks(path)))


def test_csv_bad_value_names_line_and_column(tmp_path: Path) -> None:
    """A non-numeric value is an error naming the file, its line and its column."""
    path = write(tmp_path / "f.csv", "a,b\n1,2\n3,oops\n")
    with pytest.raises(ConfigError) as caught:
        list(read_chunks(path))
    assert f"{path}, line 3, column 2: 'oops' is not a number" in str(caught.value)


def test_csv_bad_value_in_a_later_chunk_names_its_line(tmp_path: Path) -> None:
    """Line numbers stay right past the first chunk."""
    path = write(tmp_path / "f.csv", "".join(f"{i},{i}\n" for i in range(10)) + "1,\n")
    with pytest.raises(ConfigError) as caught:
        list(read_chunks(path, chunk_rows=3))
    assert "line 11, column 2: '' is not a number" in str(caught.value)


def test_csv_ragged_row_is_an_error(tmp_path: Path) -> None:
    """A row with a different number of columns names its line, also across chunks."""
    path = write(tmp_path / "f.csv", "1,2\n3,4\n5,6,7\n")
    with pytest.raises(ConfigError) as caught:
        list(read_chunks(path, chunk_rows=2))
    assert "line 3: 3 values where earlier rows have 2" in str(caught.value)


def test_csv_nan_is_rejected(tmp_path: Path) -> None:
    """NaN cannot travel in V2 JSON, so the reader refuses it and says where it is."""
    path = write(tmp_path / "f.csv", "1,2\n3,nan\n")
    with pytest.raises(ConfigError) as caught:
        list(read_chunks(path))
    assert "line 2, column 2: nan is not a finite number" in str(caught.value)


def test_missing_file_and_unknown_extension_are_config_errors(tmp_path: Path) -> None:
    """A missing file or an unknown extension is a ConfigError that says what to do."""
    with pytest.raises(ConfigError, match="no such file"):
        read_chunks(tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match="pass --format"):
        format_of(tmp_path / "data.txt")
    expected = "csv"
    assert expected == format_of(tmp_path / "data.txt", "csv")


# ---------------------------------------------------------------------------------------------
# JSON Lines


def test_jsonl_rows_and_ready_requests_keep_file_order(tmp_path: Path) -> None:
    """List lines become rows, object lines ready requests, yielded in file order."""
    request = {"id": "r1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    text = "[1, 2]\n[3, 4]\n" + orjson.dumps(request).decode() + "\n\n[5, 6]\n"
    chunks = list(read_chunks(write(tmp_path / "f.jsonl", text)))
    expected_count = 3
    assert expected_count == len(chunks)
    np.testing.assert_array_equal(np.array([[1, 2], [3, 4]]), chunks[0])
    assert ReadyRequest(orjson.dumps(request), "r1", 3) == chunks[1]
    np.testing.assert_array_equal(np.array([[5, 6]]), chunks[2])


def test_jsonl_bad_line_is_named(tmp_path: Path) -> None:
    """A line that is neither a list of numbers nor an object names its line."""
    path = write(tmp_path / "f.jsonl", '[1, 2]\n["a", 2]\n')
    with pytest.raises(ConfigError, match="line 2: expected a list of numbers"):
        list(read_chunks(path))


def test_jsonl_invalid_json_is_named(tmp_path: Path) -> None:
    """Malformed JSON names its line."""
    path = write(tmp_path / "f.jsonl", "[1, 2]\n[1, \n")
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        list(read_chunks(path))


# ---------------------------------------------------------------------------------------------
# npy


def test_parquet_columns_become_rows_in_chunks_like_csv(tmp_path: Path) -> None:
    """A Parquet file's numeric columns (int, float, bool) come back as the same rows as the CSV of them,
    in chunks of at most chunk_rows rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": [1, 2, 3, 4, 5], "b": [0.5, -1.0, 2.5, 3.0, 600.0], "c": [True, False, True, True, False]})
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=2)
    write(tmp_path / "f.csv", "a,b,c\n1,0.5,1\n2,-1,0\n3,2.5,1\n4,3,1\n5,600,0\n")

    chunks = arrays_of(read_chunks(tmp_path / "f.parquet", chunk_rows=3))

    assert [3, 2] == [len(c) for c in chunks]
    np.testing.assert_array_equal(rows_of(read_chunks(tmp_path / "f.csv")), np.concatenate(chunks))


@pytest.mark.parametrize(
    ("column", "message"),
    [(["x", "y"], r"column 'a' holds string; every column must be numeric"), ([1.0, None], r"row 1, column 1: nan")],
)
def test_parquet_text_columns_and_nulls_are_refused(tmp_path: Path, column: list[Any], message: str) -> None:
    """A text column is refused naming it; a null is refused like a NaN, naming its row and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": column}), tmp_path / "f.parquet")
    with pytest.raises(ConfigError, match=message):
        list(read_chunks(tmp_path / "f.parquet"))


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pyarrow, reading Parquet says which extra to install."""
    (tmp_path / "f.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"pip install 'streamscore\[parquet\]'"):
        list(read_chunks(tmp_path / "f.parquet"))


def test_npy_is_read_in_chunks(tmp_path: Path) -> None:
    """A .npy array comes back in chunks of at most chunk_rows rows."""
    array = np.arange(14, dtype=np.float32).reshape(7, 2)
    np.save(tmp_path / "f.npy", array)
    chunks = arrays_of(read_chunks(tmp_path / "f.npy", chunk_rows=3))
    expected_sizes = [3, 3, 1]
    assert expected_sizes == [len(c) for c in chunks]
    np.testing.assert_array_equal(array, np.concatenate(chunks))


def test_npy_must_be_two_dimensional(tmp_path: Path) -> None:
    """A 1-D array is refused with its shape in the message."""
    np.save(tmp_path / "f.npy", np.arange(3))
    with pytest.raises(ConfigError, match=r"shape \(3,\); a 2-D array"):
        list(read_chunks(tmp_path / "f.npy"))


def test_a_truncated_npy_is_refused_with_the_rows_it_has(tmp_path: Path) -> None:
    """A file cut short (a copy interrupted) is an error naming how many rows it holds, not a short job."""
    path = tmp_path / "f.npy"
    np.save(path, np.arange(40, dtype=np.float32).reshape(10, 4))
    path.write_bytes(path.read_bytes()[: -4 * 4 * 3])  # the last three rows gone
    with pytest.raises(ConfigError, match="ends after 7 of its 10 rows"):
        list(read_chunks(path, chunk_rows=4))


def test_a_column_major_npy_gives_the_same_rows(tmp_path: Path) -> None:
    """A Fortran-ordered array is read as the same rows as its C-ordered copy."""
    array = np.arange(24, dtype=np.float64).reshape(6, 4)
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    assert array.tolist() == np.concatenate(arrays_of(read_chunks(tmp_path / "f.npy", chunk_rows=4))).tolist()


def test_npy_object_arrays_are_refused(tmp_path: Path) -> None:
    """Pickled (object) arrays are not loaded: allow_pickle is off."""
    np.save(tmp_path / "f.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"not a readable \.npy array"):
        list(read_chunks(tmp_path / "f.npy"))


# ---------------------------------------------------------------------------------------------
# Chunking, for any row count and chunk size


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=40),
    columns=st.integers(min_value=1, max_value=4),
    chunk_rows=st.integers(min_value=1, max_value=12),
    fmt=st.sampled_from(["csv", "jsonl", "npy"]),
)
def test_chunks_concatenate_to_the_original_rows(rows: int, columns: int, chunk_rows: int, fmt: str) -> None:
    """In every format, chunks hold at most chunk_rows rows and concatenate to the file's rows."""
    array = np.arange(rows * columns, dtype=np.float64).reshape(rows, columns) / 4
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"f.{fmt}"
        if fmt == "npy":
            np.save(path, array)
        elif fmt == "csv":
            path.write_text("".join(",".join(map(repr, row)) + "\n" for row in array.tolist()))
        else:
            path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in array.tolist()))
        chunks = arrays_of(read_chunks(path, chunk_rows=chunk_rows))
    assert all(0 < len(c) <= chunk_rows for c in chunks)
    actual = np.concatenate(chunks) if chunks else np.empty((0, columns))
    np.testing.assert_array_equal(array, actual)


# ---------------------------------------------------------------------------------------------
# FeatureProducer over a fake client


class FakeSender:
    """Records what is sent; deliveries resolve when `settle()` runs, or fail for chosen keys."""

    def __init__(self, fail_keys: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.sent: list[dict[str, Any]] = []
        self.pending: list[asyncio.Future[Any]] = []
        self.max_pending = 0
        self.fail_keys = fail_keys

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **more: Any
    ) -> asyncio.Future[Any]:
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": more.get("headers")})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key in self.fail_keys:
            future.set_exception(RuntimeError("NotLeaderForPartition"))
        else:
            asyncio.get_running_loop().call_soon(future.set_result, len(self.sent))
        self.pending = [f for f in self.pending if not f.done()] + [future]
        self.max_pending = max(self.max_pending, len(self.pending))
        return future


async def test_send_rows_splits_into_requests_keyed_by_id() -> None:
    """5 rows at 2 per request make 3 requests whose key is their id and whose data is the rows."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", model="iris", datatype="FP32", id_prefix="f", producer=fake)
    rows = np.arange(10, dtype=np.float64).reshape(5, 2)
    ids = await producer.send_rows(rows, rows_per_request=2)
    expected_ids = ["f-0", "f-2", "f-4"]
    assert expected_ids == ids
    assert [i.encode() for i in expected_ids] == [s["key"] for s in fake.sent]
    decoded = [decode_request(s["value"]) for s in fake.sent]
    assert ids == [d.id for d in decoded]
    np.testing.assert_array_equal(rows, np.concatenate([d.inputs[0].data for d in decoded]))
    expected_headers = [(h.MODEL, b"iris")]
    assert expected_headers == fake.sent[0]["headers"]


async def test_binary_outputs_asks_every_request_for_binary_outputs() -> None:
    """binary_outputs=True: the requests of send_rows and send_arrays set binary_data_output."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", binary_outputs=True, producer=fake)

    await producer.send_rows(np.ones((2, 2), dtype=np.float32), rows_per_request=1)
    await producer.send_arrays({"a": np.ones((1, 2), dtype=np.float32)})

    requests = [decode_request(s["value"]) for s in fake.sent]
    assert [{"binary_data_output": True}] * 3 == [r.parameters for r in requests]
    assert [True] * 3 == [r.binary.wants("y") for r in requests]


async def test_generated_ids_continue_across_calls() -> None:
    """Generated ids count rows across calls, so no id repeats within one producer."""
    producer = FeatureProducer("unused:9092", "in", id_prefix="p", producer=FakeSender())
    first = await producer.send_rows([[1.0], [2.0]])
    second = await producer.send_rows([[3.0]])
    expected = (["p-0", "p-1"], ["p-2"])
    assert expected == (first, second)


async def test_in_flight_deliveries_are_bounded() -> None:
    """No more than max_in_flight delivery futures are pending at once."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", max_in_flight=4, producer=fake)
    await producer.send_rows(np.zeros((50, 1)))
    expected_records = 50
    assert expected_records == len(fake.sent)
    assert fake.max_pending <= 5  # the limit, plus the one just handed over


async def test_unacknowledged_records_are_named() -> None:
    """A failed delivery raises ProduceError naming the failed id; sending stops there."""
    producer = FeatureProducer("unused:9092", "in", id_prefix="p", max_in_flight=1, producer=FakeSender({b"p-3"}))
    with pytest.raises(ProduceError) as caught:
        await producer.send_rows(np.zeros((10, 1)))
    message = str(caught.value)
    assert "1 of 10 records were not acknowledged" in message
    assert "ids p-3;" in message


async def test_send_request_keys_by_body_id_and_passes_bytes_unchanged() -> None:
    """A ready request goes out byte for byte, keyed by the id in its body."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", producer=fake)
    body = b'{"id":"r-7","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}'
    key = await producer.send_request(body, headers={"traceparent": "00-ab"})
    expected = ("r-7", b"r-7", body, [("traceparent", b"00-ab")])
    assert expected == (key, fake.sent[0]["key"], fake.sent[0]["value"], fake.sent[0]["headers"])


async def test_send_arrays_sends_one_multi_input_request() -> None:
    """send_arrays puts every named array into one request."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", producer=fake)
    request_id = await producer.send_arrays({"a": np.ones((2, 3), np.float32), "b": np.zeros((2,), np.int64)}, id="m-1")
    decoded = decode_request(fake.sent[0]["value"])
    expected = ("m-1", [("a", "FP32"), ("b", "INT64")])
    assert expected == (request_id, [(t.name, t.datatype) for t in decoded.inputs])


async def test_integer_datatype_refuses_fractional_rows() -> None:
    """Sending 1.5 as INT64 would truncate it, so nothing is sent and the error says why."""
    fake = FakeSender()
    producer = FeatureProducer("unused:9092", "in", datatype="INT64", producer=fake)
    with pytest.raises(ConfigError, match="would truncate"):
        await producer.send_rows([[1.5]])
    nothing: list[dict[str, Any]] = []
    assert nothing == fake.sent


def test_make_ids_name_the_first_row_of_each_request() -> None:
    """Ids are <prefix>-<first row index>, offset by the rows sent before."""
    expected = ["d-10", "d-13", "d-16"]
    assert expected == make_ids("d", 10, 7, 3)


def test_progress_updates_at_most_every_interval() -> None:
    """With a fake clock, updates closer than the interval are skipped."""
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, enabled=True, interval=0.2, clock=lambda: now[0])
    for t, rows in [(1.0, 100), (1.1, 200), (1.3, 300)]:
        now[0] = t
        progress.update(rows)
    progress.close()
    expected = "\rsent 100 rows (100 rows/s)\rsent 300 rows (231 rows/s)\n"
    assert expected == stream.getvalue()


# ---------------------------------------------------------------------------------------------
# The CLI's expected failures: one line on stderr, an exit code, no traceback


def parse_produce(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamscore")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["produce", *argv])


def test_cli_bad_csv_value_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad CSV value: exit 2 and one stderr line naming the file and line (checked first)."""
    path = write(tmp_path / "bad.csv", "1,2\nx,3\n")
    code = run(parse_produce("--file", str(path), "--bootstrap-servers", "127.0.0.1:1"))
    err = capsys.readouterr().err
    expected = (
        2,
        [
            f"streamscore produce: {path}, line 2, column 1: 'x' is not a number; "
            "CSV files must hold numeric columns only"
        ],
    )
    assert expected == (code, err.splitlines())


def test_cli_unreachable_broker_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No broker at the address: exit 1 and one stderr line saying what to check."""
    path = write(tmp_path / "ok.csv", "1,2\n")
    code = run(parse_produce("--file", str(path), "--bootstrap-servers", "127.0.0.1:1"))
    lines = capsys.readouterr().err.splitlines()
    expected = (1, 1, True)
    assert expected == (code, len(lines), "cannot reach the Kafka broker at 127.0.0.1:1" in lines[0])
