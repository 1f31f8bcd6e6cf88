"""A record's fate at admission, decided in one pure step: items to batch, a dead letter, or a load.

    admit(record, limits, lineup)
        -> Admitted   the item to batch (and its shadow twin, when a shadow version is set)
        -> DeadLetter the record cannot be scored: undecodable, invalid, or for no servable model
        -> Load       the version that should score it is not loaded yet: load it, then call
                      `admit_loaded`, which never asks for a load again

The worker (worker/runner.py) only carries the fate out. Nothing here touches Kafka or disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from artifacts.runtime import LoadedModel
from schemas.codec import InferenceRequest, Limits
from schemas.errors import ModelNotFoundError, RecordError, ValidationError
from schemas.names import NAME_PATTERN
from schemas.records import Record
from worker.lineup import Chosen, Lineup, Missing
from worker.outcomes import DeadLetter, Item
from worker.pipeline import dead_letter, decode, fallback_id, make_item, model_choice


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per record
class Admitted:
    """An item for the batcher, and the twin a shadow version scores (its result goes to the shadow topic)."""

    item: Item
    twin: Item | None = None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per record
class Load:
    """Load version `version` of `name` (None: its default), then decide again with `admit_loaded`."""

    record: Record
    request: InferenceRequest
    name: str
    version: str | None


Fate = Admitted | DeadLetter | Load


def admit(record: Record, limits: Limits, lineup: Lineup) -> Fate:
    """Decode `record` and route it against `lineup`; never raises."""
    try:
        request = decode(record, limits)
    except ValidationError as error:  # well formed, but past a limit: say which model it was meant for
        return dead_letter(record, error, _meant_for(record, lineup))
    except RecordError as error:
        return dead_letter(record, error)
    return _route_safely(record, request, lineup)


def admit_loaded(load: Load, lineup: Lineup, problem: RecordError | None) -> Admitted | DeadLetter:
    """Decide again after the load that `load` asked for: `problem` says why it could not be served."""
    if problem is not None:
        return _named(load.record, problem, load.name, load.version)
    fate = _route_safely(load.record, load.request, lineup)
    if isinstance(fate, Load):  # loaded, and already dropped again (a desired state changed meanwhile)
        shown = load.version or "default"
        return dead_letter(load.record, ModelNotFoundError(f"model {load.name} version {shown} is not loaded"))
    return fate


def _route_safely(record: Record, request: InferenceRequest, lineup: Lineup) -> Fate:
    try:
        return _route(record, request, lineup)
    except Exception as error:  # a bug of ours must not turn one record into a crash loop (as in decode)
        unroutable = ValidationError(f"the request could not be routed to a model: {error!r}")
        unroutable.__cause__ = error
        return dead_letter(record, unroutable)


def _route(record: Record, request: InferenceRequest, lineup: Lineup) -> Fate:
    name, pinned = model_choice(record)
    try:
        chosen = lineup.choose(name, pinned, request.id or fallback_id(record))
    except RecordError as error:
        return _named(record, error, name or lineup.default_name, pinned)
    if isinstance(chosen, Missing):
        return Load(record, request, chosen.name, chosen.version)
    return _admitted(record, request, chosen)


def _admitted(record: Record, request: InferenceRequest, chosen: Chosen) -> Admitted | DeadLetter:
    try:
        item = make_item(record, request, chosen.model)
    except RecordError as error:
        return dead_letter(record, error, chosen.model)
    return Admitted(item, None if chosen.shadow is None else _twin(record, request, chosen.shadow))


def _twin(record: Record, request: InferenceRequest, shadow: LoadedModel) -> Item | None:
    """The item the shadow version scores; none when the request does not fit it (best effort)."""
    try:
        twin = make_item(record, request, shadow)
    except RecordError:
        return None
    twin.shadow = True
    return twin


def _meant_for(record: Record, lineup: Lineup) -> LoadedModel | None:
    """The loaded model a record would go to, judged from its headers and key (None: not loaded)."""
    name, pinned = model_choice(record)
    try:
        chosen = lineup.choose(name, pinned, fallback_id(record))
    except Exception:  # only to name the model on a dead letter: never worth a crash
        return None
    return chosen.model if isinstance(chosen, Chosen) else None


def _named(record: Record, error: Exception, name: str, version: str | None) -> DeadLetter:
    """A dead letter naming the model and version it was meant for, though neither could be loaded."""
    if version is None or not NAME_PATTERN.match(name) or not NAME_PATTERN.match(version):
        return dead_letter(record, error)
    return DeadLetter(record, error, fallback_id(record), (name, version, ""))
