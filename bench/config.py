"""What one benchmark run measures: the scenarios, their sizes, and the run's knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PARTITIONS = 3
DEFAULT_NAIVE_RECORDS = 5_000  # the naive loop is slow: timing its first records is enough
DEFAULT_ORT_SECONDS = 2.0
DEFAULT_TRICKLE_RATE = 500.0  # requests per second
DEFAULT_TRICKLE_SECONDS = 5.0
QUICK_RECORDS = 2_000
QUICK_TRICKLE_SECONDS = 1.0
RESULTS_PATH = Path(__file__).with_name("results.json")

MLP_FEATURES = 8
MLP_HIDDEN = 32
MLP_CLASSES = 3
MODEL_NAME = "mlp"
MODEL_VERSION = "1"
INPUT_NAME = "x"


@dataclass(frozen=True)
class Scenario:
    """A kind of traffic: how many rows each request carries, and how many requests by default."""

    name: str
    rows_per_request: int
    default_records: int

    def records(self, override: int | None) -> int:
        """Requests to produce: the flag if given, else the scenario's default."""
        return override if override is not None else self.default_records


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("single-row-mlp", rows_per_request=1, default_records=100_000),
        Scenario("32-row-mlp", rows_per_request=32, default_records=25_000),
    )
}


@dataclass(frozen=True)
class BenchConfig:
    """The knobs of one run, from the command line."""

    scenarios: tuple[Scenario, ...]
    records: int | None = None  # None: each scenario's default
    naive_records: int = DEFAULT_NAIVE_RECORDS
    partitions: int = DEFAULT_PARTITIONS
    ort_seconds: float = DEFAULT_ORT_SECONDS
    trickle_rate: float = DEFAULT_TRICKLE_RATE
    trickle_seconds: float = DEFAULT_TRICKLE_SECONDS
    profile: Path | None = None  # write cProfile stats of the streamscore run here
    output: Path = RESULTS_PATH


def install_bench_model(root: Path) -> Path:
    """The benchmark's MLP in a model folder under `root`; its path."""
    from demo.models import install_model, make_mlp

    shape = {"features": MLP_FEATURES, "hidden": MLP_HIDDEN, "classes": MLP_CLASSES}
    return install_model(root, MODEL_NAME, MODEL_VERSION, make_mlp, **shape)
