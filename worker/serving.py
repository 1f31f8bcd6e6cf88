"""Applying desired states in a worker: load, verify, warm up, and only then switch.

A version that fails to load, to match its manifest's sha256, or to run its warm-up inference
is never served: what served before keeps serving, the refusal is logged, and the worker's
status record (read by `streamscore model show`) says which version was refused and why.
The switch itself is a dictionary update on the event loop, so it falls between batches:
records taken before it are scored by the old version, records taken after by the new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import structlog

from registry.control import DesiredState, WorkerStatus, encode_status, now
from schemas.errors import ModelLoadError, ModelNotFoundError
from worker.model import LoadedModel
from worker.store import ModelStore

log = structlog.get_logger("streamscore.serving")

Publish = Callable[[bytes, bytes], Awaitable[None]]


class Serving:
    """Loads what desired states ask for and tells the store to serve it."""

    def __init__(self, store: ModelStore, executor: Executor, worker: str, publish: Publish | None = None) -> None:
        self.store = store
        self.executor = executor
        self.worker = worker
        self.publish = publish
        self.switches = 0
        self.active: dict[str, str] = {}  # model -> the version this worker has been serving

    async def load(self, name: str, version: str) -> LoadedModel:
        """Load, verify and warm up a version in the model thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.store.load, name, version)

    async def load_default(self, name: str | None = None) -> LoadedModel:
        """The version a model serves without a pin: the highest one that loads."""
        while True:
            found_name, version = self.store.resolve(name, None)
            try:
                model = await self.load(found_name, version)
                self.active.setdefault(found_name, version)
                return model
            except ModelLoadError as error:
                log.error("model_version_refused", model=found_name, version=version, error=str(error))
                self.store.forget_resolution(found_name)  # the next resolve skips the refused version

    async def apply(self, state: DesiredState) -> None:
        """Serve `state`, except the versions that cannot be loaded; report what serves."""
        name = state.model
        failed: dict[str, str] = {}
        for version in sorted(state.versions()):
            self.store.forget_failure(name, version)
            try:
                await self.load(name, version)
            except (ModelLoadError, ModelNotFoundError) as error:
                failed[version] = str(error)
                log.error(
                    "model_version_refused",
                    model=name,
                    version=version,
                    error=str(error),
                    hint="the version serving now keeps serving",
                )
        before = self.active.get(name)
        effective = dataclasses.replace(
            state,
            current=before if state.current in failed else state.current,
            canary=None if state.canary and state.canary.version in failed else state.canary,
            shadow=None if state.shadow in failed else state.shadow,
        )
        self.store.set_state(effective)
        if effective.current is not None:
            self.active[name] = effective.current
        if before is not None and effective.current not in (None, before):
            self.switches += 1
            log.info("model_switched", model=name, previous=before, current=effective.current, change=state.change)
        await self.report(effective, failed)

    async def report(self, state: DesiredState, failed: dict[str, str]) -> None:
        """Publish this worker's status for one model: what serves, every version it refused."""
        if self.publish is None:
            return
        failed = {**{v: why for (model, v), why in self.store.failed.items() if model == state.model}, **failed}
        status = WorkerStatus(
            model=state.model,
            worker=self.worker,
            current=state.current,
            canary=state.canary.version if state.canary else None,
            shadow=state.shadow,
            failed=failed,
            at=now(),
        )
        try:
            await self.publish(status.key(), encode_status(status))
        except Exception as error:  # a status is information; serving goes on without it
            log.warning("status_not_published", model=state.model, error=repr(error))

    def shadow_model(self, model: LoadedModel) -> LoadedModel | None:
        """The shadow version to score alongside `model`, when `model` is its model's current one."""
        state = self.store.states.get(model.name)
        if state is None or state.shadow is None or state.current != model.version:
            return None
        return self.store.cached(model.name, state.shadow)
