"""The pure parts of `streamscore score`: job ids, resume planning, chunking, the failure verdict, progress lines."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from producer.progress import LineProgress
from producer.scoring import (
    JobShape,
    chunk_rows_for,
    describe_reasons,
    job_prefix,
    plan_chunk,
    reasons_of,
    too_many_failures,
)


def test_job_prefix_follows_content_and_shape_not_mtime(tmp_path: Path) -> None:
    """Same bytes and settings give the same prefix after a touch or copy; a changed byte or setting does not."""
    path = tmp_path / "rows.csv"
    path.write_text("1,2\n3,4\n")
    first = job_prefix(path, JobShape())
    os.utime(path, (0, 0))
    copy = tmp_path / "other" / "rows.csv"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    changed = tmp_path / "changed" / "rows.csv"
    changed.parent.mkdir()
    changed.write_text("1,2\n3,5\n")

    assert first.startswith("rows-") and 15 == len(first)
    assert first == job_prefix(path, JobShape()) == job_prefix(copy, JobShape())
    assert first != job_prefix(changed, JobShape())
    assert first != job_prefix(path, JobShape(rows_per_request=2))
    assert first != job_prefix(path, JobShape(model="other"))


def test_plan_chunk_with_nothing_answered_sends_every_row() -> None:
    """A fresh run: every request of the chunk, every row."""
    plan = plan_chunk(np.zeros(5, dtype=bool), 0, 10, 2)
    assert [0, 1, 2, 3, 4] == plan.numbers.tolist()
    assert list(range(10)) == plan.rows.tolist()


def test_plan_chunk_skips_answered_requests_and_keeps_their_rows_out() -> None:
    """Requests 1 and 3 answered (of the second chunk, rows 6..11 at 2 per request): only 3 requests' rows go."""
    answered = np.array([True, False, False, True, False, True, False], dtype=bool)
    plan = plan_chunk(answered, 6, 6, 2)  # requests 3, 4, 5
    assert [4] == plan.numbers.tolist()
    assert [2, 3] == plan.rows.tolist()


def test_plan_chunk_keeps_the_short_last_request_whole() -> None:
    """7 rows at 3 per request, request 1 answered: requests 0 and 2 (one row) are sent, in order."""
    plan = plan_chunk(np.array([0, 1, 0], dtype=np.int8), 0, 7, 3)
    assert [0, 2] == plan.numbers.tolist()
    assert [0, 1, 2, 6] == plan.rows.tolist()


def test_plan_chunk_all_answered_is_empty() -> None:
    """A finished job published again sends nothing."""
    assert plan_chunk(np.ones(4, dtype=bool), 0, 4, 1).empty


@pytest.mark.parametrize(("rows_per_request", "expected"), [(1, 10_000), (3, 9_999), (32, 9_984), (20_000, 20_000)])
def test_chunks_hold_whole_requests(rows_per_request: int, expected: int) -> None:
    """A chunk is a multiple of rows_per_request near 10,000 rows, at least one request."""
    assert expected == chunk_rows_for(rows_per_request)


@pytest.mark.parametrize(
    ("dead", "expected", "share", "fails"),
    [(0, 10, 0.0, False), (1, 10, 0.0, True), (1, 100, 0.01, False), (2, 100, 0.01, True), (10, 10, 1.0, False)],
)
def test_failure_share_passes_only_above_the_limit(dead: int, expected: int, share: float, fails: bool) -> None:
    """The verdict fails when dead letters / requests is strictly above --max-failures."""
    assert fails == too_many_failures(dead, expected, share)


def test_reasons_count_stage_and_error_most_frequent_first() -> None:
    """Dead-letter lines summarised as `stage/error n`, the most frequent first."""
    lines = [
        b'{"key":"a-0","row":0,"stage":"validate","error":"ValidationError","message":"m"}',
        b'{"key":"a-1","row":1,"stage":"score","error":"ScoringError","message":"m"}',
        b'{"key":"a-2","row":2,"stage":"validate","error":"ValidationError","message":"m"}',
    ]
    expected = "dead letters by reason: validate/ValidationError 2, score/ScoringError 1"
    assert expected == describe_reasons(reasons_of(lines))


def test_line_progress_shows_rate_and_eta_at_most_every_interval() -> None:
    """Plain lines: 100 of 1,000 answered 10 s after start is 10/s, 90 s to go; one line per 5 s interval."""
    now = [0.0]
    stream = io.StringIO()
    progress = LineProgress(stream, 1000, 0, interval=5.0, clock=lambda: now[0])
    now[0] = 1.0
    progress.update(10, 50)
    now[0] = 10.0
    progress.update(100, 200)

    expected = "scored 100 of 1,000 requests (10 %), 10 requests/s, ETA 0:01:30; 200 published\n"
    assert expected == stream.getvalue()
