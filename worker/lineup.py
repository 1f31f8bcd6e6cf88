"""Which version scores a request: a pure answer over a snapshot of what this worker serves.

A `Lineup` is immutable: the worker's `Serving` builds a new one whenever what serves changes
(a version loaded or refused, a desired state applied), between records, so that each record
is routed against one consistent view. The rule, in order:

1. a version the request pins (header `streamscore-model-version`) scores it, if it loads;
2. else the model's desired state routes it: the canary for its share of request ids, else
   the current version (and the shadow version scores it too, when it went to the current one);
3. else the model's default version: the one pinned by the settings, or the highest that loads.

`choose` says which loaded model that is, or which version must be loaded first (`Missing`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from artifacts.manifest import NAME_PATTERN
from artifacts.runtime import LoadedModel
from schemas.control import DesiredState
from schemas.errors import ModelNotFoundError

Key = tuple[str, str]  # (model name, version)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per record
class Chosen:
    """The loaded version that scores a request, and a shadow version that scores it too."""

    model: LoadedModel
    shadow: LoadedModel | None = None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per record
class Missing:
    """The version that should score a request is not loaded: load `version` (None: the default) first."""

    name: str
    version: str | None


@dataclass(frozen=True)
class Lineup:
    """What one worker serves: loaded versions, refused ones, desired states and default versions."""

    default_name: str
    loaded: Mapping[Key, LoadedModel] = field(default_factory=dict)
    refused: Mapping[Key, str] = field(default_factory=dict)  # versions that failed to load, and why
    states: Mapping[str, DesiredState] = field(default_factory=dict)  # as applied (refused versions left out)
    defaults: Mapping[str, str] = field(default_factory=dict)  # model -> its version without a state

    def choose(self, name: str | None, pinned: str | None, request_id: str) -> Chosen | Missing:
        """The version that scores a request for model `name` (None: the default model).

        Raises ModelNotFoundError when the pinned version is not a version name or was refused.
        """
        name = name or self.default_name
        if pinned:
            return self._pinned(name, pinned)
        state = self.states.get(name)
        if state is not None and state.current is not None:
            version = state.route(request_id) or state.current
        else:
            found = self.defaults.get(name)
            if found is None:
                return Missing(name, None)
            version = found
        model = self.loaded.get((name, version))
        if model is None:
            return Missing(name, version)
        if state is None or state.shadow is None or state.current != version:
            return Chosen(model)
        return Chosen(model, self.loaded.get((name, state.shadow)))

    def _pinned(self, name: str, version: str) -> Chosen | Missing:
        if not NAME_PATTERN.match(version):
            raise ModelNotFoundError(f"model version {version!r} is not a valid version name")
        model = self.loaded.get((name, version))
        if model is not None:
            return Chosen(model)
        reason = self.refused.get((name, version))
        if reason is not None:
            raise ModelNotFoundError(f"model {name} version {version} cannot be served: {reason}")
        return Missing(name, version)

    def serving(self, name: str) -> str | None:
        """The version `name` serves to requests that pin none (its current or default version)."""
        state = self.states.get(name)
        return state.current if state is not None and state.current else self.defaults.get(name)
