"""What `dlq inspect` and `dlq replay` print, without a broker (`producer/dlq_report.py`)."""

from __future__ import annotations

import orjson
import pytest

from producer.dlq import DeadLetter, Outcome, Plan, decide
from producer.dlq_report import (
    Counts,
    Sample,
    describe_failures,
    inspect_json,
    render_counts,
    render_letter,
    render_outcome,
    shorten_stacktrace,
    show_added,
    show_bytes,
    show_value,
    table,
)
from schemas import headers as h
from schemas.errors import DecodeError, InferenceError
from tests.test_dlq import WRITTEN_AT, dead_letter


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, "null", id="null"),
        pytest.param(b"order-17", '"order-17"', id="text"),
        pytest.param(b"", '""', id="empty"),
        pytest.param(b"\x00\x01", "2 bytes, hex 0001", id="control-bytes"),
        pytest.param(b"\xff" * 40, f"40 bytes, hex {'ff' * 32}...", id="long-binary"),
    ],
)
def test_bytes_show_as_text_or_length_and_hex(raw: bytes | None, expected: str) -> None:
    """Keys and header values: printable UTF-8 quoted, anything else as length and a hex prefix."""
    assert expected == show_bytes(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"id": "a", "inputs": []}', '{"id": "a", "inputs": []}', id="json-as-it-is"),
        pytest.param(b'{"id": "a", "inp', '16 bytes of text, not JSON: "{\\"id\\": \\"a\\", \\"inp"', id="truncated"),
        pytest.param(b"\x00\xffnot json", "10 bytes, not UTF-8 text: hex 00ff6e6f74206a736f6e", id="binary"),
        pytest.param(b"", "empty (0 bytes)", id="empty"),
        pytest.param(None, "null", id="null"),
    ],
)
def test_values_show_as_json_text_or_length_and_hex(raw: bytes | None, expected: str) -> None:
    """A value is JSON as sent when it is JSON, quoted text when text, else length and hex prefix."""
    assert expected == show_value(raw)


def test_a_long_value_is_cut_saying_how_much_is_left_out() -> None:
    """A large JSON value shows its first 400 characters."""
    shown = show_value(b'"' + b"x" * 998 + b'"')

    assert shown.endswith("... (600 more characters)")


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        (h.DLT_ORIGINAL_PARTITION, h.encode_int(3), "3"),
        (h.DLT_ORIGINAL_OFFSET, h.encode_long(2**40), str(2**40)),
        (h.DLT_ORIGINAL_TIMESTAMP, h.encode_long(WRITTEN_AT), f"2025-12-02T14:03:11.123Z ({WRITTEN_AT})"),
        (h.DLT_ORIGINAL_OFFSET, b"\x01", "unreadable (1 bytes, hex 01)"),
        (h.DLT_ORIGINAL_TOPIC, b"requests", '"requests"'),
        (h.DLT_STAGE, b"decode", '"decode"'),
    ],
)
def test_spring_headers_are_decoded(name: str, raw: bytes, expected: str) -> None:
    """Partition, offset and timestamp print as numbers (the timestamp also as ISO time); text as text."""
    assert expected == show_added(name, raw)


PYTHON_TRACE = (
    "Traceback (most recent call last):\n"
    '  File "worker/pipeline.py", line 10, in score\n'
    "    session.run(batch)\n"
    '  File "artifacts/runtime.py", line 20, in run\n'
    "    raise InferenceError(message)\n"
    "schemas.errors.InferenceError: Gather: index 100 out of bounds\n"
)
JAVA_TRACE = (
    "org.apache.kafka.common.errors.SerializationException: bad\n"
    "\tat org.example.Deserializer.deserialize(Deserializer.java:42)\n"
    "\tat org.apache.kafka.clients.consumer.internals.Fetcher.parseRecord(Fetcher.java:1)\n"
    "\tat org.apache.kafka.clients.consumer.internals.Fetcher.fetchRecords(Fetcher.java:2)\n"
)


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        pytest.param(
            PYTHON_TRACE,
            '(3 lines left out) | File "artifacts/runtime.py", line 20, in run | raise InferenceError(message) | '
            "schemas.errors.InferenceError: Gather: index 100 out of bounds",
            id="python-keeps-its-end",
        ),
        pytest.param(
            JAVA_TRACE,
            "org.apache.kafka.common.errors.SerializationException: bad | "
            "at org.example.Deserializer.deserialize(Deserializer.java:42) | "
            "at org.apache.kafka.clients.consumer.internals.Fetcher.parseRecord(Fetcher.java:1) | "
            "(1 lines left out)",
            id="java-keeps-its-start",
        ),
        pytest.param("ValueError: short\n", "ValueError: short", id="short-as-it-is"),
    ],
)
def test_stack_traces_are_shortened_to_the_lines_that_say_the_most(trace: str, expected: str) -> None:
    """Python names the error last, Java first: three lines of it and a count of the rest."""
    assert expected == shorten_stacktrace(trace)


def test_a_dead_letter_renders_its_parts_readably() -> None:
    """Where it is, key, value, the original headers, and every dead-letter header decoded."""
    letter = dead_letter(at=(1, 7))

    text = render_letter(letter)

    lines = text.splitlines()
    assert "requests.DLT[1]@7  2025-12-02T14:03:11.123Z" == lines[0]
    assert '  key    "r1"' == lines[1]
    assert '  value  {"id": "r1", "inputs": []}' == lines[2]
    assert ["  original headers (2)", '    traceparent: "00-abc-01"', "    x-custom: 2 bytes, hex 0001"] == lines[3:6]
    assert "    kafka_dlt-original-partition: 3" in lines
    assert "    kafka_dlt-original-offset: 41" in lines
    assert '    streamscore-dlt-model-version: "2"' in lines
    assert any(line.startswith("    kafka_dlt-exception-stacktrace: ") for line in lines)


def test_counts_by_stage_error_model_version_and_hour() -> None:
    """Each selected dead letter counts once in each table; missing facts count as (none)."""
    counts = Counts()
    letters = [
        dead_letter(),
        dead_letter(timestamp=WRITTEN_AT + 3_600_000),
        dead_letter(b"x", error=DecodeError("not JSON"), stage="decode", model=None),
        DeadLetter("x.DLT", 0, 0, WRITTEN_AT, None, b""),
    ]
    for letter in letters:
        counts.add(letter)

    assert {"validate": 2, "decode": 1, "(none)": 1} == dict(counts.stages)
    assert {"ValidationError": 2, "DecodeError": 1, "(none)": 1} == dict(counts.errors)
    assert {("mlp", "2"): 2, ("(none)", "(none)"): 2} == dict(counts.models)
    assert {"2025-12-02T14:00Z": 3, "2025-12-02T15:00Z": 1} == dict(counts.hours)


def test_the_counts_print_as_tables_most_frequent_first() -> None:
    """A head line with how much was read and selected, then one table per count, hours in order."""
    counts = Counts(read=5)
    for letter in [dead_letter(), dead_letter(), dead_letter(b"x", error=DecodeError("x"), stage="decode")]:
        counts.add(letter)

    text = render_counts(counts, "requests.DLT", "all 3 partitions")

    assert text.startswith("requests.DLT: 5 dead letters read (all 3 partitions), 3 selected\n\nstage     count\n")
    assert "validate      2\ndecode        1" in text
    assert "model  version  count\nmlp    2            3" in text
    assert "hour (UTC)         count\n2025-12-02T14:00Z      3" in text


def test_nothing_selected_prints_only_the_head_line() -> None:
    """No empty tables."""
    assert "t: 4 dead letters read (partition 0), 0 selected" == render_counts(Counts(read=4), "t", "partition 0")


def test_table_aligns_text_left_and_numbers_right() -> None:
    """Columns as wide as their widest cell."""
    assert "a     n\nxyz  10\nb     2\n2    10" == table(("a", "n"), [("xyz", 10), ("b", 2), ("2", 10)])


def test_the_sample_shows_each_kind_of_failure_first_whatever_the_fetch_order() -> None:
    """Three of five: the first decode and the first validate failure, then the earliest other one."""
    decode = [dead_letter(b"x", error=DecodeError("x"), stage="decode", at=(1, offset)) for offset in (4, 2)]
    validate = [dead_letter(at=(0, offset)) for offset in (9, 5, 6)]
    sample = Sample(3)

    for letter in [*decode, *validate]:
        sample.offer(letter)

    assert [(0, 5), (0, 6), (1, 2)] == [(letter.partition, letter.offset) for letter in sample.chosen()]


def test_a_sample_of_nothing_holds_nothing() -> None:
    """--show 0 (the default) keeps no dead letter in memory."""
    sample = Sample(0)
    sample.offer(dead_letter())

    assert [] == sample.chosen()


def test_inspect_json_holds_the_counts_and_the_shown_dead_letters() -> None:
    """Every table as an object, model versions as a list, dead letters decoded as in the text."""
    counts = Counts(read=1)
    letter = dead_letter()
    counts.add(letter)

    report = orjson.loads(inspect_json(counts, "requests.DLT", [letter]))

    assert {"validate": 1} == report["by_stage"]
    assert [{"model": "mlp", "version": "2", "count": 1}] == report["by_model_version"]
    assert {"2025-12-02T14:00Z": 1} == report["by_hour"]
    assert "3" == report["shown"][0]["dead_letter_headers"][h.DLT_ORIGINAL_PARTITION]
    assert [["traceparent", '"00-abc-01"'], ["x-custom", "2 bytes, hex 0001"]] == report["shown"][0]["headers"]


def _plan() -> Plan:
    """Two replays, a skip (value omitted) and a refusal, all of `requests`."""
    plan = Plan()
    plan.add(decide(dead_letter(at=(0, 0))))
    plan.add(decide(dead_letter(at=(0, 1), error=InferenceError("x"), stage="infer")))
    plan.add(decide(dead_letter(b"v" * 5000, limit=4500, at=(0, 2))))
    plan.add(decide(dead_letter(headers=((h.REPLAY_COUNT, b"3"),), at=(0, 3))))
    return plan


def test_the_replay_summary_counts_by_original_topic_and_says_how_to_fetch_what_was_skipped() -> None:
    """Totals, a table by original topic, then where each skipped original is and why each refusal."""
    text = render_outcome(Outcome(_plan()), dry_run=False, max_replays=3)

    assert text.startswith(
        "replayed 2, skipped (not all in the dead letter) 1, refused (replayed 3 times already) 1\n\n"
        "original topic  replayed  skipped  refused\n"
        "requests               2        1        1\n"
    )
    assert (
        "requests.DLT[0]@2: value omitted; the original is at requests[3]@41 while retention keeps it: "
        "kafka-console-consumer.sh --topic requests --partition 3 --offset 41 --max-messages 1"
    ) in text
    assert "requests.DLT[0]@3: replayed 3 times already (--max-replays 3)" in text
    assert render_outcome(Outcome(_plan()), dry_run=False, max_replays=1).startswith(
        "replayed 2, skipped (not all in the dead letter) 1, refused (replayed once already) 1"
    )


def test_a_dry_run_says_what_it_would_replay() -> None:
    """Nothing was sent, so the summary says "would replay"."""
    text = render_outcome(Outcome(_plan()), dry_run=True, max_replays=3)

    assert text.startswith("would replay 2, ")


def test_failures_are_named_with_what_to_do() -> None:
    """Unacknowledged records are named by their dead letter; an aborted transaction says nothing was replayed."""
    plan = _plan()
    failed = ((plan.replays[1], "MessageSizeTooLargeError()"),)

    partial = describe_failures(Outcome(plan, failed), None)
    aborted = describe_failures(Outcome(plan, failed, aborted="1 of 2 records failed"), "replay-1")

    assert partial.startswith("1 of 2 records were not acknowledged and may not have been replayed: ")
    assert "requests.DLT[0]@1 -> requests: MessageSizeTooLargeError()" in partial
    assert "The other 1 were" in partial
    assert aborted.startswith("transaction replay-1 aborted (1 of 2 records failed): nothing was replayed")
