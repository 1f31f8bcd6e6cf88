"""Where a worker's time goes, stage by stage: wall time inside each stage's function, per record.

`StageClock` wraps the functions that do each stage's work (in this process only, for one run)
and adds up the time spent inside them:

| stage    | function                                  | thread        |
|----------|-------------------------------------------|---------------|
| decode   | `worker.pipeline.decode` (JSON or binary) | event loop    |
| validate | `worker.pipeline.make_item` (the request against the model's signature) | event loop |
| batch    | `ScoreLoop.add` (into a batch) and `pipeline._concatenate` (the batch's arrays) | both |
| infer    | `LoadedModel.run` (onnxruntime)            | model thread  |
| encode   | `pipeline._encode_results` (V2 responses)  | model thread  |
| produce  | `Sender.send` (to the producer's buffer)   | event loop    |
| commit   | the committer's `commit`                   | event loop    |

The event loop's time left over (`loop other`: the Kafka client's fetches and acknowledgements,
asyncio itself) is its span minus its stages. Shares are of the span, per thread: the model
thread works while the loop does, so the two columns each add up to at most 100 %.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STAGES = ("decode", "validate", "batch", "infer", "encode", "produce", "commit")
LOOP_STAGES = ("decode", "validate", "batch", "produce", "commit")


class StageClock:
    """Seconds spent in each stage's functions while `installed()`."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._patches: list[tuple[Any, str, Any]] = []

    @contextmanager
    def installed(self) -> Iterator[StageClock]:
        import worker.admit as admit
        import worker.committer as committer
        import worker.pipeline as pipeline
        import worker.scoring as scoring
        import worker.sender as sender
        from artifacts.runtime import LoadedModel

        targets = [
            (admit, "decode", "decode"),
            (admit, "make_item", "validate"),
            (scoring.ScoreLoop, "add", "batch"),
            (pipeline, "_concatenate", "batch"),
            (LoadedModel, "run", "infer"),
            (pipeline, "_encode_results", "encode"),
            (sender.Sender, "send", "produce"),
            (committer.Committer, "commit", "commit"),
            (committer.TransactionalCommitter, "commit", "commit"),
        ]
        for owner, name, stage in targets:
            self._patch(owner, name, stage)
        try:
            yield self
        finally:
            for owner, name, original in reversed(self._patches):
                setattr(owner, name, original)
            self._patches.clear()

    def _patch(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        wrapped = self._timed_async(original, stage) if _is_async(original) else self._timed(original, stage)
        self._patches.append((owner, name, original))
        setattr(owner, name, wrapped)

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds  # two threads add; a rare lost update is within a profile's noise

    def _timed(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._add(stage, time.perf_counter() - started)

        return timed

    def _timed_async(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(function)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self._add(stage, time.perf_counter() - started)

        return timed

    def profile(self, records: int, span_s: float) -> dict[str, dict[str, float]]:
        """Each stage's microseconds per record and share of the span; the event loop's remainder."""
        out = {
            stage: {
                "us_per_record": round(seconds * 1e6 / max(1, records), 2),
                "share": round(seconds / span_s, 3) if span_s else 0.0,
            }
            for stage, seconds in self.seconds.items()
        }
        other = max(0.0, span_s - sum(self.seconds[s] for s in LOOP_STAGES))
        out["loop other"] = {
            "us_per_record": round(other * 1e6 / max(1, records), 2),
            "share": round(other / span_s, 3) if span_s else 0.0,
        }
        return out


def _is_async(function: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(function)


def format_profile(name: str, profile: dict[str, dict[str, float]]) -> str:
    """One line per stage: microseconds per record and share of the span."""
    lines = [f"{name}: {'stage':<11} {'us/record':>10} {'share':>7}"]
    for stage, figures in profile.items():
        lines.append(f"{' ' * len(name)}  {stage:<11} {figures['us_per_record']:>10.2f} {figures['share']:>7.1%}")
    return "\n".join(lines)
