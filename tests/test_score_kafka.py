"""`streamscore score` against a real broker and an in-process worker: end to end, resumed, judged, bounded."""

from __future__ import annotations

import argparse
import asyncio
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from demo.models import install_model, make_mlp
from producer.client import FeatureProducer
from producer.score import EXIT_FAILURES, EXIT_OK, add_parser, run
from producer.scoring import JobShape, job_prefix
from tests.conftest import MakeTopics
from tests.harness import REPO, end_offsets, run_burst, worker_settings_for
from worker.runner import Worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 2
FEATURES = 8
RSS_GROWTH_BOUND_MB = 40  # a 200k-row file may cost at most this much more peak RSS than a 1k-row one


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    return root


@pytest.fixture
async def topics(make_topics: MakeTopics) -> dict[str, str]:
    names = await make_topics("in", "out", "in.DLT", partitions=PARTITIONS)
    return {"input": names[0], "results": names[1], "dead": names[2]}


@pytest.fixture
def settings(kafka_bootstrap: str, topics: dict[str, str], model_root: Path, unique_group: str) -> Settings:
    """A worker for this test's topics, default model mlp, at most 4 rows a request."""
    return worker_settings_for(
        kafka_bootstrap,
        topics,
        model_root,
        unique_group,
        max_request_rows=4,
        log_level="warning",
    )


def write_rows(path: Path, rows: int) -> np.ndarray:
    """A CSV of `rows` rows of 8 features (row i holds i/1000 ...), with a header; returns the rows."""
    data = (np.arange(rows * FEATURES, dtype=np.float64).reshape(rows, FEATURES) % 97) / 100
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(FEATURES)])
        writer.writerows(data.tolist())
    return data


def score_argv(settings: Settings, path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "score", str(path), "--out", str(out), "--model", "mlp",
        "--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.input_topic,
        "--results-topic", settings.results_topic, "--dead-letter-topic", settings.dead_letter_topic,
        "--timeout", "30", *extra,
    ]  # fmt: skip


def score_args(settings: Settings, path: Path, out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamscore")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(score_argv(settings, path, out, *extra))


async def score_with_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run `score` (in a thread: it owns its event loop, as under the CLI) while a worker serves."""
    worker = Worker(settings)
    serving = asyncio.create_task(worker.run())
    try:
        return await asyncio.to_thread(run, args)
    finally:
        worker.request_stop()
        await asyncio.wait_for(serving, 60)


async def published(settings: Settings) -> int:
    """Records on the input topic."""
    return sum((await end_offsets(settings.bootstrap_servers, settings.input_topic, PARTITIONS)).values())


def scored_rows(out: Path) -> list[int]:
    with out.open() as handle:
        return [int(line["row"]) for line in csv.DictReader(handle)]


async def test_a_file_is_scored_in_row_order_and_a_second_run_publishes_nothing(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """25 rows at 3 per request (9 requests): exit 0, one CSV line per row in order with 3 probabilities;
    run again: nothing published, the same output."""
    path, out = tmp_path / "rows.csv", tmp_path / "scored.csv"
    write_rows(path, 25)
    args = score_args(settings, path, out, "--rows-per-request", "3")

    assert EXIT_OK == await score_with_worker(settings, args)

    first_output = out.read_text()
    assert list(range(25)) == scored_rows(out)
    assert ["id", "row", "model_version"] == first_output.splitlines()[0].split(",")[:3]
    assert "published 9 of 9 requests (0 were answered already)" in capsys.readouterr().out

    assert EXIT_OK == await score_with_worker(settings, args)

    assert "published 0 of 9 requests (9 were answered already)" in capsys.readouterr().out
    assert (9, first_output) == (await published(settings), out.read_text())


async def test_an_interrupted_run_resumed_publishes_only_the_missing_rows(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step by step: a run published and got answers for the first 4 of 10 requests, then died;
    the rerun publishes the other 6 (10 records on the input topic in all) and writes all 30 rows in order."""
    path, out = tmp_path / "rows.csv", tmp_path / "scored.csv"
    write_rows(path, 30)
    prefix = job_prefix(path, JobShape(rows_per_request=3, model="mlp"))
    first_rows = np.loadtxt(path, delimiter=",", skiprows=1)[:12]
    async with FeatureProducer(
        settings.bootstrap_servers, settings.input_topic, model="mlp", datatype="FP32"
    ) as producer:
        await producer.send_rows(first_rows, ids=[f"{prefix}-{r}" for r in (0, 3, 6, 9)], rows_per_request=3)
    assert 0 == await run_burst(settings)

    code = await score_with_worker(settings, score_args(settings, path, out, "--rows-per-request", "3"))

    assert (EXIT_OK, 10) == (code, await published(settings))
    assert "published 6 of 10 requests (4 were answered already)" in capsys.readouterr().out
    assert list(range(30)) == scored_rows(out)


async def test_dead_letters_over_max_failures_exit_3_with_reasons(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """7 rows at 5 per request: the 5-row request passes the worker's 4-row limit and is dead-lettered;
    1 of 2 is over --max-failures 0.4: exit 3, the reason summarised, the good rows still written."""
    path, out = tmp_path / "rows.csv", tmp_path / "scored.csv"
    write_rows(path, 7)
    args = score_args(settings, path, out, "--rows-per-request", "5", "--max-failures", "0.4")

    code = await score_with_worker(settings, args)

    captured = capsys.readouterr()
    assert (EXIT_FAILURES, [5, 6]) == (code, scored_rows(out))
    assert "dead letters by reason: " in captured.out
    assert "50.00% of requests were dead-lettered, over --max-failures 0.4" in captured.err


_MEASURE = """
import sys
from streamscore.cli import main
code = main(sys.argv[1:])
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(f"VmHWM_KB={peak}", file=sys.stderr)
sys.exit(code)
"""


def peak_rss_mb(argv: list[str]) -> float:
    """Run `streamscore <argv>` in a subprocess; its exit must be 0; return its peak RSS in MB."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    line = next(line for line in done.stderr.splitlines() if line.startswith("VmHWM_KB="))
    return int(line.split("=")[1]) / 1024


async def test_memory_is_bounded_by_a_chunk_not_the_file(settings: Settings, tmp_path: Path) -> None:
    """A 200k-row CSV (20k requests of 10 rows) peaks within RSS_GROWTH_BOUND_MB of a 1k-row one."""
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write_rows(small, 1_000)
    write_rows(large, 200_000)
    worker = Worker(settings.replace(max_request_rows=10, max_batch_rows=512))
    serving = asyncio.create_task(worker.run())
    try:
        extra = ("--rows-per-request", "10")
        small_mb = await asyncio.to_thread(peak_rss_mb, score_argv(settings, small, tmp_path / "s.csv", *extra))
        large_mb = await asyncio.to_thread(peak_rss_mb, score_argv(settings, large, tmp_path / "l.csv", *extra))
    finally:
        worker.request_stop()
        await asyncio.wait_for(serving, 60)

    print(f"peak RSS: 1k rows {small_mb:.0f} MB, 200k rows {large_mb:.0f} MB")
    assert large_mb - small_mb < RSS_GROWTH_BOUND_MB, (small_mb, large_mb)
