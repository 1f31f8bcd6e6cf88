"""Fuzz the worker's admission and scoring under a memory limit (run by tests/test_admit_fuzz.py).

    python -m tests.admit_fuzz [--examples 500] [--headroom-mb 512]

Loads the demo MLP into a `Lineup`, limits this process's address space (RLIMIT_AS) to what it
uses once ready plus `headroom-mb`, then drives `worker.admit.admit` with hypothesis: arbitrary
JSON values wrapped into V2-shaped requests, memory bombs, and arbitrary bytes, under random
headers and limits. Every record must end as an Admitted (then scored, alone and beside a good
record: Results and DeadLetters only), a DeadLetter whose headers and log line can be written,
or a Load. Anything raised is a failure; a MemoryError is one too (the limit is far above what a
record of at most 1 MiB may take). Prints the count of each fate as one JSON line; exit 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.runtime import load_model
from demo.models import make_mlp
from schemas import headers as h
from schemas.codec import Limits, encode_request
from schemas.control import Canary, DesiredState
from schemas.errors import ModelNotFoundError, RecordError
from schemas.records import InputRecord
from schemas.tensors import DATATYPES
from tests.factories import make_record
from worker.admit import Admitted, Fate, Load, admit, admit_loaded
from worker.deadletter import dead_letter_headers
from worker.lineup import Lineup
from worker.logs import render_json
from worker.outcomes import DeadLetter, Item, Outcome, Result
from worker.pipeline import score_batch

MiB = 1 << 20
CORRELATION = ("traceparent",)


def often(usual: st.SearchStrategy[Any], otherwise: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A draw from `usual` three times in four, else from `otherwise`."""
    return st.integers(0, 3).flatmap(lambda n: otherwise if n == 3 else usual)  # hypothesis favours 0


texts = often(st.text(max_size=8), st.text(st.characters(categories=["Cs", "Ll"]), max_size=4))  # Cs: lone surrogates
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and Infinity included: Python's json writes them as literals
    | texts
)
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
numbers = often(st.floats(-10, 10, width=32) | st.integers(-5, 5), st.sampled_from([math.nan, math.inf, 1e39]))


@st.composite
def mlp_data(draw: st.DrawFn) -> tuple[list[int], Any]:
    """A shape of rows x 8 and its data: right, short, nested, or sprinkled with any JSON value."""
    rows = draw(st.integers(0, 3))
    flat: list[Any] = draw(st.lists(numbers, min_size=rows * 8, max_size=rows * 8))
    if flat and draw(st.integers(0, 3)) == 0:
        flat[draw(st.integers(0, len(flat) - 1))] = draw(json_values)
    data = draw(st.sampled_from(["flat", "flat", "flat", "nested", "short", "any"]))
    if data == "nested":
        return [rows, 8], [flat[i : i + 8] for i in range(0, len(flat), 8)]
    if data == "short":
        return [rows, 8], flat[:-1]
    return [rows, 8], flat if data == "flat" else draw(json_values)


@st.composite
def v2_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """One V2 input: mostly the MLP's `x`, any field possibly any JSON value or missing."""
    shape, data = draw(mlp_data())
    fields = {
        "name": draw(often(st.just("x"), st.sampled_from(["x", "y"]) | texts)),
        "datatype": draw(often(st.just("FP32"), st.sampled_from(list(DATATYPES)) | json_values)),
        "shape": draw(often(st.just(shape), st.lists(st.integers(0, 9), max_size=3) | json_values)),
        "data": data,
    }
    if draw(st.integers(0, 9)) == 0:
        fields["parameters"] = draw(st.fixed_dictionaries({}, optional={"binary_data_size": json_values}) | json_values)
    dropped = draw(often(st.none(), st.sampled_from(["name", "shape", "datatype", "data"])))
    return {k: v for k, v in fields.items() if k != dropped}


@st.composite
def v2_bodies(draw: st.DrawFn) -> bytes:
    """A V2-shaped request as Python's json writes it (NaN literals, integers past 64 bits, surrogate escapes)."""
    inputs = st.lists(v2_inputs(), min_size=1, max_size=1) | st.lists(v2_inputs(), min_size=1, max_size=3)
    body: dict[str, Any] = {"inputs": draw(often(inputs, json_values))}
    for member, values in (
        ("id", texts),
        ("outputs", st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "z"])}), max_size=3)),
        ("parameters", st.dictionaries(texts, json_values, max_size=3)),
    ):
        if draw(st.booleans()):
            body[member] = draw(often(values, json_values))
    return json.dumps(body).encode()


@st.composite
def bombs(draw: st.DrawFn) -> bytes:
    """Up to ~550 KB that numpy would make a fixed-width string array of at least 3 GB: one long string among
    8 192 or 32 768 values (shaped to fit the MLP, or not)."""
    long = "a" * draw(st.integers(100_000, 400_000))
    count = draw(st.sampled_from([1024, 4096])) * 8
    datatype = draw(st.sampled_from(["FP32", "BYTES", "INT64"]))
    data: list[Any] = [draw(numbers) if datatype != "BYTES" else "b"] * count
    data[draw(st.integers(0, count - 1))] = long
    shape = draw(st.sampled_from([[count // 8, 8], [count], [1, 10**9]]))
    bomb = {"name": "x", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"id": "bomb", "inputs": [bomb]}).encode()


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A JSON header with binary_data_size and random bytes after it; its header length (maybe wrong)."""
    size = draw(st.integers(0, 64) | json_values)
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "parameters": {"binary_data_size": size}}]}
    ).encode()
    blob = draw(st.binary(max_size=64))
    length = draw(st.just(len(header)) | st.integers(-2, len(header) + len(blob) + 2))
    return header + blob, str(length).encode()


@st.composite
def records(draw: st.DrawFn) -> InputRecord:
    """A record: a V2-shaped request, a bomb, a binary request, or arbitrary bytes; random headers and key."""
    headers: list[tuple[str, bytes]] = []
    kind = draw(st.sampled_from(["v2", "v2", "v2", "v2", "bomb", "binary", "bytes", "none"]))
    if kind == "binary":
        value, length = draw(binary_requests())
        headers.append((draw(st.sampled_from([h.BINARY_HEADER_LENGTH, "Inference-Header-Content-Length"])), length))
    else:
        value = {"v2": v2_bodies(), "bomb": bombs(), "bytes": st.binary(max_size=256), "none": st.none()}[kind]
        value = draw(value)
    names = st.sampled_from([*h.MODEL_ALIASES, *h.MODEL_VERSION_ALIASES, "Streamscore-Model", "traceparent"])
    for name in draw(often(st.just([]), st.lists(names, max_size=3))):
        headers.append((name, draw(st.sampled_from([b"mlp", b"1", b"2", b"other", b"../x"]) | st.binary(max_size=8))))
    key = draw(st.none() | st.binary(max_size=8))
    return make_record(value, key=key, headers=headers, offset=draw(st.integers(0, 2**40)))


def check_fate(fate: Fate, lineup: Lineup, limits: Limits, good: Item, tally: Counter[str]) -> None:
    """Carry `fate` as far as a worker would without a broker; raise if any step raises."""
    tally[type(fate).__name__] += 1
    if isinstance(fate, Load):
        fate = admit_loaded(fate, lineup, ModelNotFoundError(f"model {fate.name} is not served here"))
    if isinstance(fate, DeadLetter):
        check_outcome(fate)
        tally[f"{fate.error.stage} {type(fate.error).__name__}"] += 1  # type: ignore[attr-defined]
        return
    assert isinstance(fate, Admitted), fate
    batches = [[fate.item]] + ([[good, fate.item, good]] if fate.item.key == good.key else [])
    if fate.twin is not None:
        batches.append([fate.twin])
    for batch in batches:
        outcomes = score_batch(batch, CORRELATION, check_finite=not limits.allow_nonfinite)
        assert len(batch) == len(outcomes), outcomes
        for outcome in outcomes:
            check_outcome(outcome)
            tally[f"scored {type(outcome).__name__}"] += 1


def check_outcome(outcome: Outcome) -> None:
    """An outcome can be produced and logged: a result's JSON and key, a dead letter's headers and log line."""
    if isinstance(outcome, Result):
        json.loads(outcome.value)
        assert isinstance(outcome.key, bytes)
        return
    assert isinstance(outcome.error, RecordError), repr(outcome.error)
    stage = outcome.error.stage
    dead_letter_headers(
        outcome.record, outcome.error, stage=stage, group_id="g", worker="w", attempts=1, model=outcome.model
    )
    render_json({"event": "record_dead_lettered", "request_id": outcome.request_id, "reason": str(outcome.error)})


def ready(folder: Path) -> tuple[Lineup, Item]:
    """The lineup (the MLP as versions 1 and 2, a canary of 2) and a good item for it, scored once."""
    path = make_mlp(folder / "model.onnx")
    loaded = {("mlp", version): load_model(path, "mlp", version) for version in ("1", "2")}
    canary = DesiredState("mlp", current="1", canary=Canary("2", 0.5), shadow="2")  # routing hashes request ids
    lineup = Lineup("mlp", loaded=loaded, states={"mlp": canary}, defaults={"mlp": "1"})
    value = encode_request({"x": np.full((1, 8), 0.5, dtype=np.float32)}, id="good")
    fate = admit(make_record(value, key=b"good"), Limits(), lineup)
    assert isinstance(fate, Admitted)
    assert [Result] == [type(outcome) for outcome in score_batch([fate.item], CORRELATION)]
    return lineup, fate.item


def limit_memory(headroom: int) -> tuple[int, int]:
    """Limit the address space to what this process maps now plus `headroom` bytes; (mapped, limit)."""
    status = Path("/proc/self/status").read_text().splitlines()
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = mapped + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return mapped, limit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--headroom-mb", type=int, default=512)
    args = parser.parse_args()
    tally: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        lineup, good = ready(Path(folder))
        mapped, limit = limit_memory(args.headroom_mb * MiB)

        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(record=records(), allow_nonfinite=st.booleans())
        def fuzz(record: InputRecord, allow_nonfinite: bool) -> None:
            limits = Limits(allow_nonfinite=allow_nonfinite)
            check_fate(admit(record, limits, lineup), lineup, limits, good, tally)

        with np.errstate(over="ignore"):  # values past FP32's range become inf (and are refused)
            fuzz()
    print(json.dumps({"mapped_mib": math.ceil(mapped / MiB), "limit_mib": limit // MiB, **tally}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
