"""`streamscore model compare`: the pure comparison, and the command against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from registry.compare import Pairs, Report, Side, collect, compare, pair_up
from schemas import headers as h
from schemas.codec import InferenceResponse, encode_response
from schemas.tensors import Tensor, as_tensor
from streamscore import cli
from tests.conftest import MakeTopics
from tests.harness import Out, produce

LABELS = ["setosa", "versicolor", "virginica"]


def response(
    request_id: str,
    version: str,
    *,
    probabilities: Sequence[Sequence[float]] | None = None,
    label: Sequence[int] | None = None,
    score: Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
) -> InferenceResponse:
    """A decoded response of model `mlp` holding the outputs given."""
    outputs: list[Tensor] = []
    if probabilities is not None:
        outputs.append(
            Tensor(
                "probabilities",
                "FP32",
                np.asarray(probabilities, dtype=np.float32),
                {"labels": list(labels)} if labels else None,
            )
        )
    if label is not None:
        outputs.append(as_tensor("label", np.asarray(label, dtype=np.int64)))
    if score is not None:
        outputs.append(as_tensor("score", np.asarray(score, dtype=np.float64)))
    return InferenceResponse(request_id, "mlp", version, tuple(outputs))


def matched(*pairs: tuple[InferenceResponse, InferenceResponse]) -> Pairs:
    """Pairs with nothing unpaired."""
    return Pairs(matched=list(pairs))


def by_name(report: Report) -> dict[str, Any]:
    """The report's outputs by name."""
    return {o.name: o for o in report.outputs}


# ---------------------------------------------------------------------------------------------
# Unit: compare() on hand-built pairs


def test_identical_responses_never_disagree() -> None:
    """Responses equal value for value: 0 % disagreement, zero differences, every label agrees."""
    a = response("r1", "1", probabilities=[[0.1, 0.9], [0.7, 0.3]], label=[1, 0], score=[2.5, -1.0])
    b = response("r1", "2", probabilities=[[0.1, 0.9], [0.7, 0.3]], label=[1, 0], score=[2.5, -1.0])

    report = compare(matched((a, b)))

    assert (1, 0, 0.0) == (report.pairs, report.disagreeing, report.disagreement)
    outputs = by_name(report)
    assert ("probabilities", 0.0, 0.0, 0.0, 1.0) == (
        outputs["probabilities"].kind,
        outputs["probabilities"].max_abs_diff,
        outputs["probabilities"].mean_abs_diff,
        outputs["probabilities"].p99_abs_diff,
        outputs["probabilities"].label_agreement,
    )
    assert ("labels", None, 1.0) == (
        outputs["label"].kind,
        outputs["label"].max_abs_diff,
        outputs["label"].label_agreement,
    )
    assert ("float", 0.0, None) == (
        outputs["score"].kind,
        outputs["score"].max_abs_diff,
        outputs["score"].label_agreement,
    )


def test_float_difference_beyond_atol_disagrees() -> None:
    """A float output off by more than atol makes its request disagree; max and mean abs diff measure it."""
    same = (response("r1", "1", score=[1.0, 2.0]), response("r1", "2", score=[1.0, 2.0]))
    off = (response("r2", "1", score=[1.0, 2.0]), response("r2", "2", score=[1.0, 2.5]))

    report = compare(matched(same, off), atol=1e-3)

    score = by_name(report)["score"]
    assert (2, 1, 0.5) == (report.pairs, report.disagreeing, report.disagreement)
    assert (1, 0.5, 0.125, 0.5) == (score.disagreeing, score.max_abs_diff, score.mean_abs_diff, score.p99_abs_diff)


def test_float_difference_within_atol_agrees() -> None:
    """A float output off by less than atol agrees, though its difference is still reported."""
    pair = (response("r1", "1", score=[1.0, 2.0]), response("r1", "2", score=[1.0, 2.0 + 1e-7]))

    report = compare(matched(pair), atol=1e-6)

    assert 0 == report.disagreeing
    assert pytest.approx(1e-7) == by_name(report)["score"].max_abs_diff


def test_p99_is_an_observed_difference_among_many() -> None:
    """Over 200 values with one outlier, p99 is a typical difference while max is the outlier."""
    diffs = np.full(200, 0.01)
    diffs[0] = 5.0
    pair = (response("r1", "1", score=np.zeros(200).tolist()), response("r1", "2", score=diffs.tolist()))

    score = by_name(compare(matched(pair)))["score"]

    assert (5.0, 0.01) == (score.max_abs_diff, score.p99_abs_diff)


def test_label_flips_are_counted() -> None:
    """An int label output is compared exactly: one flipped value of four is 75 % agreement."""
    pair_a = (response("r1", "1", label=[0, 1]), response("r1", "2", label=[0, 1]))
    pair_b = (response("r2", "1", label=[2, 1]), response("r2", "2", label=[2, 0]))

    report = compare(matched(pair_a, pair_b))

    label = by_name(report)["label"]
    assert (1, 4, 3, 0.75) == (report.disagreeing, label.labels, label.labels_agreeing, label.label_agreement)


def test_probability_rows_compared_by_argmax_with_their_label_names() -> None:
    """A [rows, classes] output with parameters.labels: the winning class names are compared per row."""
    current = response("r1", "1", probabilities=[[0.8, 0.1, 0.1], [0.2, 0.5, 0.3]], labels=LABELS)
    shadow = response("r1", "2", probabilities=[[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]], labels=LABELS)

    probabilities = by_name(compare(matched((current, shadow))))["probabilities"]

    assert ("probabilities", 2, 1) == (probabilities.kind, probabilities.labels, probabilities.labels_agreeing)
    assert pytest.approx(0.2) == probabilities.max_abs_diff


def test_reordered_classes_agree_by_name() -> None:
    """The same winning class under a new class order is an agreeing label (values still differ)."""
    current = response("r1", "1", probabilities=[[0.9, 0.1]], labels=["cat", "dog"])
    shadow = response("r1", "2", probabilities=[[0.1, 0.9]], labels=["dog", "cat"])

    probabilities = by_name(compare(matched((current, shadow))))["probabilities"]

    assert (1, 1, 1) == (probabilities.labels, probabilities.labels_agreeing, probabilities.disagreeing)


def test_probability_matrix_without_labels_is_recognised() -> None:
    """Rows in [0, 1] summing to 1 are probabilities even without parameters.labels: argmax flips count."""
    pair = (response("r1", "1", probabilities=[[0.6, 0.4]]), response("r1", "2", probabilities=[[0.4, 0.6]]))

    probabilities = by_name(compare(matched(pair), atol=1.0))["probabilities"]

    assert ("probabilities", 1, 0, 1) == (
        probabilities.kind,
        probabilities.labels,
        probabilities.labels_agreeing,
        probabilities.disagreeing,
    )


def test_mixed_multi_row_responses_pool_their_values() -> None:
    """Requests of 1 and 3 rows: diffs pool over all 4 rows, labels over all 4 rows."""
    one = (
        response("r1", "1", probabilities=[[0.9, 0.1]], label=[0]),
        response("r1", "2", probabilities=[[0.9, 0.1]], label=[0]),
    )
    three = (
        response("r2", "1", probabilities=[[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]], label=[0, 1, 0]),
        response("r2", "2", probabilities=[[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], label=[0, 1, 1]),
    )

    report = compare(matched(one, three))

    outputs = by_name(report)
    assert (2, 1) == (report.pairs, report.disagreeing)
    assert (4, 4) == (outputs["probabilities"].labels, outputs["probabilities"].labels_agreeing)
    assert pytest.approx(0.1) == outputs["probabilities"].max_abs_diff
    assert pytest.approx(0.2 / 8) == outputs["probabilities"].mean_abs_diff
    assert (4, 3) == (outputs["label"].labels, outputs["label"].labels_agreeing)


def test_output_missing_on_one_side_is_a_mismatch() -> None:
    """An output the shadow does not return makes the request disagree and counts as mismatched."""
    pair = (response("r1", "1", label=[1], score=[0.5]), response("r1", "2", label=[1]))

    report = compare(matched(pair))

    assert (1, 1, 1) == (report.disagreeing, by_name(report)["score"].mismatched, by_name(report)["score"].requests)


def test_unpaired_ids_and_versions_are_counted() -> None:
    """Ids on one side only are counted per side; versions are collected from every response, in order."""
    current = Side({"a": response("a", "1", label=[1]), "b": response("b", "1", label=[1])})
    shadow = Side(
        {"a": response("a", "2", label=[1]), "c": response("c", "10", label=[0]), "d": response("d", "2", label=[0])},
        unreadable=1,
    )

    report = compare(pair_up(current, shadow))

    assert (1, 1, 2, 0, 1) == (
        report.pairs,
        report.unpaired_current,
        report.unpaired_shadow,
        report.unreadable_current,
        report.unreadable_shadow,
    )
    assert (("1",), ("2", "10")) == (report.current_versions, report.shadow_versions)


def test_limit_caps_the_pairs() -> None:
    """--limit N: at most N pairs, taken in the current side's order."""
    side = Side({k: response(k, "1", label=[1]) for k in "abc"})

    pairs = pair_up(side, side, limit=2)

    assert ["a", "b"] == [c.id for c, _ in pairs.matched]


def test_no_pairs_is_zero_disagreement() -> None:
    """Without pairs the report is empty, not a division by zero."""
    report = compare(Pairs(matched=[]))

    assert (0, 0.0, ()) == (report.pairs, report.disagreement, report.outputs)


@dataclass(frozen=True)
class Record:
    """A consumer record as `collect` reads it."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def test_collect_keeps_the_model_by_header_keyed_by_request_id() -> None:
    """Only records headed with the model count, keyed by the record key; the latest wins; junk is unreadable."""
    mlp = [(h.MODEL, b"mlp")]
    body = encode_response(id="r1", model_name="mlp", model_version="1", outputs=[as_tensor("label", [1])])
    again = encode_response(id="r1", model_name="mlp", model_version="3", outputs=[as_tensor("label", [1])])
    records = [
        Record(b"r1", body, mlp),
        Record(b"r2", body, [(h.MODEL, b"other")]),
        Record(b"r3", b"not json", mlp),
        Record(b"r1", again, mlp),
        Record(b"r4", None, mlp),
    ]

    side = collect(records, "mlp")

    assert (["r1"], "3", 1) == (list(side.responses), side.responses["r1"].model_version, side.unreadable)


# ---------------------------------------------------------------------------------------------
# Integration: the command against a real broker


def result(request_id: str, version: str, probabilities: list[list[float]], model: str = "mlp") -> Out:
    """A result record as the worker produces it: keyed by request id, model headers, V2 body."""
    body = encode_response(
        id=request_id,
        model_name=model,
        model_version=version,
        outputs=[
            Tensor("probabilities", "FP32", np.asarray(probabilities, dtype=np.float32), {"labels": ["no", "yes"]})
        ],
    )
    return Out(request_id.encode(), body, [(h.MODEL, model.encode()), (h.MODEL_VERSION, version.encode())])


def make_result_topics(make_topics: MakeTopics) -> tuple[str, str]:
    """A fresh results topic and shadow topic (made from this sync test)."""

    async def make() -> list[str]:
        return await make_topics("results", "shadow")

    results, shadow = asyncio.run(make())
    return results, shadow


def run_compare(bootstrap: str, *extra: str) -> tuple[int, str, str]:
    """Run `streamscore model compare mlp ...` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["model", "--bootstrap-servers", bootstrap, "compare", "mlp", *extra])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.kafka
def test_compare_reads_both_topics_and_reports_as_json(kafka_bootstrap: str, make_topics: MakeTopics) -> None:
    """4 shared ids (one label flip), one id per side unpaired, another model ignored: the JSON says so."""
    results, shadow = make_result_topics(make_topics)
    current = [result(f"r{i}", "1", [[0.9, 0.1]]) for i in range(5)] + [result("x", "1", [[0.5, 0.5]], "other")]
    shadows = [result(f"r{i}", "2", [[0.9, 0.1]]) for i in range(1, 5)] + [result("r9", "2", [[0.1, 0.9]])]
    shadows[0] = result("r1", "2", [[0.2, 0.8]])
    asyncio.run(produce(kafka_bootstrap, results, current))
    asyncio.run(produce(kafka_bootstrap, shadow, shadows))

    code, stdout, _ = run_compare(kafka_bootstrap, "--results-topic", results, "--shadow-topic", shadow, "--json")

    report = json.loads(stdout)
    probabilities = report["outputs"]["probabilities"]
    assert 0 == code
    assert (4, 1, 0.25) == (report["pairs"], report["disagreeing"], report["disagreement"])
    assert {"current": 1, "shadow": 1} == report["unpaired"]
    assert {"current": ["1"], "shadow": ["2"]} == report["versions"]
    assert (4, 3) == (probabilities["labels"], probabilities["labels_agreeing"])
    assert pytest.approx(0.7) == probabilities["max_abs_diff"]
    assert pytest.approx(1.4 / 8) == probabilities["mean_abs_diff"]


@pytest.mark.kafka
def test_compare_prints_a_table_by_default(kafka_bootstrap: str, make_topics: MakeTopics) -> None:
    """Without --json the report is a table naming the model, the versions and the disagreement."""
    results, shadow = make_result_topics(make_topics)
    asyncio.run(produce(kafka_bootstrap, results, [result("r1", "1", [[0.9, 0.1]])]))
    asyncio.run(produce(kafka_bootstrap, shadow, [result("r1", "2", [[0.9, 0.1]])]))

    code, stdout, _ = run_compare(kafka_bootstrap, "--results-topic", results, "--shadow-topic", shadow)

    assert 0 == code
    assert "model mlp: 1 pairs compared" in stdout
    assert "versions: current 1; shadow 2" in stdout
    assert "disagreement: 0 of 1 requests (0.00 %)" in stdout


@pytest.mark.kafka
def test_no_pairs_exits_2_naming_topics_and_the_shadow_command(kafka_bootstrap: str, make_topics: MakeTopics) -> None:
    """Results but an empty shadow topic: exit 2, naming both topics, the model, and how to set a shadow."""
    results, shadow = make_result_topics(make_topics)
    asyncio.run(produce(kafka_bootstrap, results, [result("r1", "1", [[0.9, 0.1]])]))

    code, stdout, stderr = run_compare(
        kafka_bootstrap, "--results-topic", results, "--shadow-topic", shadow, "--timeout", "2"
    )

    assert (2, "") == (code, stdout)
    assert all(part in stderr for part in (results, shadow, "model mlp", "streamscore model shadow mlp VERSION"))
