"""What this worker serves, and changing it: load, verify, warm up, and only then switch.

`Serving` owns the worker's `Lineup` (worker/lineup.py) and replaces it after every change, on
the event loop, so a switch falls between records: records taken before it are scored by the
old version, records taken after by the new one. A version that fails to load, to match its
manifest's sha256, or to run its warm-up inference is never served: what served before keeps
serving, the refusal is logged, and the worker's status record (read by `streamscore model show`)
says which version was refused and why.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import structlog

from artifacts.runtime import LoadedModel
from schemas.control import DesiredState, WorkerStatus, encode_status, now
from schemas.errors import ModelLoadError, ModelNotFoundError
from worker.lineup import Lineup
from worker.store import ModelStore

log = structlog.get_logger("streamscore.serving")

Publish = Callable[[bytes, bytes], Awaitable[None]]


class Serving:
    """Loads what requests and desired states ask for; `lineup` is what serves now."""

    def __init__(self, store: ModelStore, executor: Executor, worker: str, publish: Publish | None = None) -> None:
        self.store = store
        self.executor = executor
        self.worker = worker
        self.publish = publish
        self.switches = 0
        self.switched: Counter[str] = Counter()  # switches of each model's default version
        self.refusals: Counter[tuple[str, str]] = Counter()  # (model, version): times refused at load
        self._states: dict[str, DesiredState] = {}
        self._defaults: dict[str, str] = {}
        self.lineup = Lineup(store.default_name)

    def _refresh(self) -> None:
        self.lineup = Lineup(
            self.store.default_name,
            loaded=dict(self.store.loaded),
            refused=dict(self.store.refused),
            states=dict(self._states),
            defaults=dict(self._defaults),
        )

    async def load(self, name: str, version: str) -> LoadedModel:
        """Load, verify and warm up a version in the model thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self.store.load, name, version)
        finally:
            self._refresh()

    async def prepare(self, name: str, version: str | None) -> ModelNotFoundError | None:
        """Load what a request needs (`version` None: `name`'s default); the reason when it cannot be served."""
        try:
            if version is None:
                await self.load_default(name)
                return None
            # off the event loop: in an object store, finding the versions is a request (a LIST)
            model = await self.load(name, await asyncio.to_thread(self.store.check_exists, name, version))
        except ModelNotFoundError as error:
            return error
        except ModelLoadError as error:
            return ModelNotFoundError(f"model {name} version {version} cannot be served: {error}")
        log.info("model_loaded", model=model.name, version=model.version, sha256=model.sha256)
        return None

    async def load_default(self, name: str | None = None) -> LoadedModel:
        """The version a model serves without a pin, loaded: its current one under a desired state,
        else the highest one that loads (ModelNotFoundError: none)."""
        found = name or self.store.default_name
        current = self.lineup.serving(found)
        if current is not None and (found, current) in self.lineup.loaded:
            return self.lineup.loaded[(found, current)]
        while True:
            version = self.store.default_version(found)
            try:
                model = await self.load(found, version)
            except ModelLoadError as error:
                log.error("model_version_refused", model=found, version=version, error=str(error))
                self.refusals[(found, version)] += 1
                if self.store.is_pinned(found, version):  # no other version may stand in for a pinned one
                    raise ModelNotFoundError(
                        f"the pinned version {version} of model {found} cannot be served: {error}; "
                        "fix it, or pin another version (STREAMSCORE_MODEL_VERSION)"
                    ) from error
                continue  # default_version skips the refused version now
            self._defaults.setdefault(found, version)
            self._refresh()
            return model

    async def apply(self, state: DesiredState) -> None:
        """Serve `state`, except the versions that cannot be loaded; report what serves."""
        name = state.model
        for version in sorted(state.versions()):
            self.store.forget_refusal(name, version)
            try:
                await self.load(name, version)
            except (ModelLoadError, ModelNotFoundError) as error:
                self.refusals[(name, version)] += 1
                log.error(
                    "model_version_refused",
                    model=name,
                    version=version,
                    error=str(error),
                    hint="the version serving now keeps serving",
                )
        before = self.lineup.serving(name)
        effective = self._effective(state, before)
        self._states[name] = effective
        self.store.keep_only(name, effective.versions() | set(effective.previous[-1:]))
        self._refresh()
        if before is not None and effective.current not in (None, before):
            self.switches += 1
            self.switched[name] += 1
            log.info("model_switched", model=name, previous=before, current=effective.current, change=state.change)
        await self.report(effective)

    def _effective(self, state: DesiredState, before: str | None) -> DesiredState:
        """`state` without the versions refused at load (the current one falls back to `before`)."""
        refused = {v for (model, v) in self.store.refused if model == state.model}
        return dataclasses.replace(
            state,
            current=before if state.current in refused else state.current,
            canary=None if state.canary and state.canary.version in refused else state.canary,
            shadow=None if state.shadow in refused else state.shadow,
        )

    async def report(self, state: DesiredState) -> None:
        """Publish this worker's status for one model: what serves, every version it refused."""
        if self.publish is None:
            return
        status = WorkerStatus(
            model=state.model,
            worker=self.worker,
            current=state.current,
            canary=state.canary.version if state.canary else None,
            shadow=state.shadow,
            failed={v: why for (model, v), why in self.store.refused.items() if model == state.model},
            at=now(),
        )
        try:
            await self.publish(status.key(), encode_status(status))
        except Exception as error:  # a status is information; serving goes on without it
            log.warning("status_not_published", model=state.model, error=repr(error))
