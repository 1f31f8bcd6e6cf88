"""Binary outputs on the real broker: requests ask for them, the worker writes them, collect reads them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from demo.models import install_model, make_sklearn_classifier, sklearn_reference, sklearn_sample_rows
from producer.client import FeatureProducer
from producer.collect import CollectOptions, collect
from producer.ledger import Expected
from schemas import headers as h
from tests.conftest import MakeTopics
from tests.harness import read_topic, responses, run_burst
from worker.settings import Settings

pytestmark = pytest.mark.kafka

ROWS, PER_REQUEST = 10, 2


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """A model folder holding the scikit-learn classifier (INT64 labels, FP32 probabilities with labels)."""
    root = tmp_path / "models"
    install_model(root, "classifier", "1", make_sklearn_classifier)
    return root


async def test_binary_output_results_read_back_like_json_ones(
    kafka_bootstrap: str, make_topics: MakeTopics, unique_group: str, model_root: Path, tmp_path: Path
) -> None:
    """Step by step: the same 10 rows go out twice at 2 per request, once asking for binary outputs
    (prefix b) and once not (prefix j); a burst worker scores them all; the binary results carry
    the header length and no JSON data, the JSON ones neither; collect writes the same CSV for both."""
    source, results, dead = await make_topics("in", "out", "in.DLT", partitions=2)
    rows = sklearn_sample_rows(ROWS)
    for prefix, binary in (("b", True), ("j", False)):
        async with FeatureProducer(kafka_bootstrap, source, id_prefix=prefix, binary_outputs=binary) as producer:
            await producer.send_rows(rows, rows_per_request=PER_REQUEST)
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=source,
        results_topic=results,
        dead_letter_topic=dead,
        group_id=unique_group,
        model_root=str(model_root),
        model_name="classifier",
        log_format="console",
        worker_id="test-worker",
    )

    assert 0 == await run_burst(settings)

    records = await read_topic(kafka_bootstrap, results, expect=2 * ROWS // PER_REQUEST)
    binary = [r for r in records if r.key.startswith(b"b-")]
    plain = [r for r in records if r.key.startswith(b"j-")]
    assert (5, 5) == (len(binary), len(plain))
    assert all(h.header_length(r.headers) is None for r in plain)
    lengths = [h.header_length(r.headers) for r in binary]
    assert all(length is not None and length < len(r.value) for length, r in zip(lengths, binary, strict=True))
    assert all(b'"data"' not in r.value[:length] for length, r in zip(lengths, binary, strict=True))
    labels, probabilities = sklearn_reference(rows)
    by_id = {r.id: r for r in responses(binary)}
    read_labels = np.concatenate([by_id[f"b-{i}"].output("output_label").data for i in range(0, ROWS, PER_REQUEST)])
    read_probabilities = np.concatenate(
        [by_id[f"b-{i}"].output("output_probability").data for i in range(0, ROWS, PER_REQUEST)]
    )
    assert labels.tolist() == read_labels.tolist()
    np.testing.assert_allclose(probabilities, read_probabilities, atol=1e-5)

    written = []
    for prefix in ("b", "j"):
        out = tmp_path / f"{prefix}.csv"
        options = CollectOptions(
            expected=Expected(prefix, ROWS // PER_REQUEST, PER_REQUEST),
            out=out,
            results_topic=results,
            dead_letter_topic=dead,
            bootstrap_servers=kafka_bootstrap,
            timeout_s=30.0,
        )
        summary = await collect(options)
        assert (ROWS // PER_REQUEST, 0, 0) == (summary.results, summary.dead_letters, summary.missing_count)
        written.append(out.read_text())
    assert written[1].replace("j-", "b-") == written[0]
