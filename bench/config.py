"""What one benchmark run measures: the scenarios, their sizes, and the run's knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PARTITIONS = 3
DEFAULT_NAIVE_RECORDS = 5_000  # the naive loop is slow: timing its first records is enough
DEFAULT_ORT_SECONDS = 2.0
DEFAULT_TRICKLE_RATE = 500.0  # requests per second
DEFAULT_TRICKLE_SECONDS = 5.0
QUICK_DIVISOR = 50  # --quick: a fiftieth of each scenario's requests (2,000 of 100,000)
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
    """A kind of traffic: the model, rows per request, JSON or binary, how many requests, how many processes."""

    name: str
    rows_per_request: int
    default_records: int
    model: str = "mlp"  # a key of bench.models.MODELS
    binary: bool = False  # Triton's binary tensor extension instead of JSON data
    processes: int = 1  # worker processes (more than one: run as `streamscore worker`, timed from the results)
    naive: bool = True  # run the naive loop too (it handles one FP32 tensor in, one out)
    targets: tuple[tuple[str, float], ...] = ()  # (ratio name, at least): vs_echo, vs_ceiling, vs_ort

    def records(self, override: int | None, quick: bool = False) -> int:
        """Requests to produce: the flag if given, else the scenario's default (a fiftieth of it, quick)."""
        if override is not None:
            return override
        return max(20, self.default_records // QUICK_DIVISOR) if quick else self.default_records


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("single-row-mlp", 1, 100_000, targets=(("vs_echo", 0.85),)),
        Scenario("single-row-mlp32", 1, 100_000, model="mlp32", targets=(("vs_echo", 0.8),)),
        Scenario("32-row-mlp", 32, 25_000, targets=(("vs_echo", 0.75),)),
        Scenario(
            "64-row-binary-mlp64", 64, 10_000, model="mlp64", binary=True, naive=False, targets=(("vs_ceiling", 0.8),)
        ),
        Scenario("16-row-forest", 16, 10_000, model="forest", naive=False, targets=(("vs_ceiling", 0.8),)),
        Scenario("cnn-binary", 1, 1_000, model="cnn", binary=True, naive=False, targets=(("vs_ort", 0.9),)),
        Scenario("two-process-mlp", 1, 100_000, processes=2, naive=False),
    )
}


@dataclass(frozen=True)
class BenchConfig:
    """The knobs of one run, from the command line."""

    scenarios: tuple[Scenario, ...]
    records: int | None = None  # None: each scenario's default
    quick: bool = False
    stages: bool = True  # time each stage (bench/stages.py); --no-stages to see what the timing costs
    naive_records: int = DEFAULT_NAIVE_RECORDS
    partitions: int = DEFAULT_PARTITIONS
    ort_seconds: float = DEFAULT_ORT_SECONDS
    trickle_rate: float = DEFAULT_TRICKLE_RATE
    trickle_seconds: float = DEFAULT_TRICKLE_SECONDS
    profile: Path | None = None  # write cProfile stats of the streamscore run here
    output: Path = RESULTS_PATH


def install_bench_model(root: Path) -> Path:
    """The benchmark's small MLP in a model folder under `root`; its path (bench.compression, bench.guarantee)."""
    from bench.models import MODELS

    return MODELS[MODEL_NAME].install(root)
