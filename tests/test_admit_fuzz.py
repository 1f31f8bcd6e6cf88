"""Admission and scoring, fuzzed under a memory limit: no record raises outside the error tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_no_record_raises_or_exhausts_memory_through_admission_and_scoring() -> None:
    """Five hundred records (V2-shaped arbitrary JSON, memory bombs, binary requests, arbitrary
    bytes) end as an Admitted scored into Results and DeadLetters, a DeadLetter, or a Load, in a
    process whose address space is limited to what it maps when ready plus 512 MiB."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree's code, whatever the installed one is
    run = subprocess.run(
        [sys.executable, "-m", "tests.admit_fuzz", "--examples", "500", "--headroom-mb", "512"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert 0 == run.returncode, run.stdout + run.stderr
    tally = json.loads(run.stdout.splitlines()[-1])
    assert tally["limit_mib"] - tally["mapped_mib"] <= 513
    assert tally.get("Admitted", 0) > 0 and tally.get("scored Result", 0) > 0
    assert tally.get("DeadLetter", 0) > 0
