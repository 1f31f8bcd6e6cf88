"""The model versions under a worker's model root, and loading them: the worker's only model I/O.

Versions come from the registry at the model root, a folder or an `s3://bucket/prefix` object
store (`<name>/<version>/manifest.json` beside the artifact: every file read once, checked
against its sha256, and loaded from exactly those bytes; files read from an object store are
kept in a local cache by sha256, checked at every load) or, for models copied into a folder by
hand, from a plain `<name>/<version>/model.onnx`, loaded unverified (and logged as such). A
version that fails to load, whatever it raises, is remembered as refused (here, and only here)
and not tried again until `forget_refusal`: a model file never stops the worker. Which version
serves a request is `worker.lineup`'s question; this module only finds, loads and keeps versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import structlog

from artifacts.manifest import MODEL_FILE, NAME_PATTERN, version_key
from artifacts.registry import Registry
from artifacts.runtime import CPU, LoadedModel, execution_providers, load_model, load_verified
from schemas.errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError, StreamscoreError
from worker.lineup import Key
from worker.settings import Settings, batch_rows

log = structlog.get_logger("streamscore.store")

PUSH_HINT = "push it with `streamscore model push` so that its files are checked at every load"


class ModelStore:
    """The models under a root directory, loaded on first use and kept while they serve."""

    def __init__(
        self,
        root: Path | str,
        *,
        cache: Path | None = None,
        default_name: str = "",
        pinned_version: str = "",
        intra_op_threads: int = 1,
        timeout_s: float = 0.0,
        providers: Sequence[str] = CPU,
        max_batch_rows: int = 0,
    ) -> None:
        self.root = root
        self.registry = Registry.at(root, cache)
        self.pinned_version = pinned_version
        self.intra_op_threads = intra_op_threads
        self.providers = execution_providers(providers)  # ConfigError now, not at the first load
        self.timeout_s = timeout_s  # of each model run (0: none)
        self.max_batch_rows = max_batch_rows  # the setting; 0: each version's tuned value, else the default
        self.default_name = default_name or self._only_model()
        self._loaded: dict[Key, LoadedModel] = {}
        self._refused: dict[Key, str] = {}  # versions refused at load, and why

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        """The store a worker with `settings` reads."""
        return cls(
            settings.model_root,
            cache=settings.model_cache_path,
            default_name=settings.model_name,
            pinned_version=settings.model_version,
            intra_op_threads=settings.intra_op_threads,
            timeout_s=settings.inference_timeout_s,
            providers=settings.execution_providers,
            max_batch_rows=settings.max_batch_rows,
        )

    def _only_model(self) -> str:
        names = [name for name in self.registry.storage.list("") if self.versions(name)]  # not only leftovers
        if len(names) != 1:
            raise ModelLoadError(
                f"no default model: {self.root} holds {len(names)} model folders ({', '.join(names)});"
                " set STREAMSCORE_MODEL_NAME"
            )
        return names[0]

    @property
    def loaded(self) -> Mapping[Key, LoadedModel]:
        """The versions loaded now."""
        return self._loaded

    @property
    def refused(self) -> Mapping[Key, str]:
        """The versions refused at load, and why."""
        return self._refused

    def versions(self, name: str) -> list[str]:
        """The versions of `name` in the registry, pushed or copied in by hand, oldest first."""
        if not NAME_PATTERN.match(name):
            return []
        found = {*self.registry.versions(name), *self.registry.unverified_versions(name)}
        return sorted((v for v in found if NAME_PATTERN.match(v)), key=version_key)

    def default_version(self, name: str | None = None) -> str:
        """The version `name` (None: the default model) serves without a desired state.

        The pinned setting for the default model, else the highest version not refused;
        ModelNotFoundError when there is none.
        """
        name = name or self.default_name
        if name == self.default_name and self.pinned_version:
            return self.check_exists(name, self.pinned_version)
        available = self._available(name)
        serveable = [v for v in available if (name, v) not in self._refused]
        if not serveable:
            reasons = "; ".join(self._refused[(name, v)] for v in available)
            raise ModelNotFoundError(f"no version of model {name!r} can be served: {reasons}")
        return serveable[-1]

    def is_pinned(self, name: str, version: str) -> bool:
        """Whether `version` of `name` is the one the settings pin (STREAMSCORE_MODEL_VERSION)."""
        return name == self.default_name and version == self.pinned_version

    def check_exists(self, name: str, version: str) -> str:
        """`version` if `name` has it on disk (or loaded); ModelNotFoundError naming the ones it has."""
        if not NAME_PATTERN.match(version):
            raise ModelNotFoundError(f"model version {version!r} is not a valid version name")
        if (name, version) in self._loaded:
            return version
        available = self._available(name)
        if version not in available:
            raise ModelUnavailableError(
                f"model {name!r} has no version {version!r} on this worker; available: {', '.join(available)}"
            )
        return version

    def _available(self, name: str) -> list[str]:
        available = self.versions(name)
        if not available and not NAME_PATTERN.match(name):  # a name no model can have: never retried
            raise ModelNotFoundError(f"unknown model {name!r}: not a valid model name")
        if not available:
            raise ModelUnavailableError(f"unknown model {name!r}: no {name}/<version>/{MODEL_FILE} under {self.root}")
        return available

    def load(self, name: str, version: str) -> LoadedModel:
        """Load, verify and warm up one version (blocking: call it from a thread), and keep it.

        A version refused once is refused again without another try, until `forget_refusal`.
        """
        model = self._loaded.get((name, version))
        if model is not None:
            return model
        if (name, version) in self._refused:
            raise ModelLoadError(self._refused[(name, version)])
        try:
            model = self._load(name, version)
        except Exception as error:  # MemoryError, OSError, ...: a version refused, never a crash
            refusal = refusal_of(name, version, error)
            self._refused[(name, version)] = str(refusal)
            raise refusal from error
        model.timeout_s = self.timeout_s
        if model.providers[:1] != self.providers[:1]:  # onnxruntime falls back when a provider fails to start
            log.warning(
                "execution_provider_fallback",
                model=name,
                version=version,
                wanted=list(self.providers),
                running_on=list(model.providers),
                hint="onnxruntime's log says why the provider did not start (drivers, libraries)",
            )
        self._loaded[(name, version)] = model
        return model

    def _load(self, name: str, version: str) -> LoadedModel:
        threads = self.intra_op_threads
        if not self.registry.has(name, version):
            log.warning("model_version_unverified", model=name, version=version, reason="no manifest", hint=PUSH_HINT)
            path = self.registry.storage.local_path(f"{name}/{version}/{MODEL_FILE}")
            if path is None:  # an object store serves pushed versions only (files, no manifest: a push under way)
                raise ModelLoadError(f"model {name} version {version} has no manifest in the registry at {self.root}")
            model = load_model(path, name, version, intra_op_threads=threads, providers=self.providers)
            return self._batched(model, None)
        stored = self.registry.read_version(name, version)  # each file read once and checked
        if stored.unverified:
            log.warning(
                "model_external_data_unverified",
                model=name,
                version=version,
                files=list(stored.unverified),
                reason="its manifest predates per-file sha256 (files)",
                hint=PUSH_HINT,
            )
        model = load_verified(
            stored.model,
            stored.external,
            name,
            version,
            sha256=stored.manifest.sha256,
            intra_op_threads=threads,
            providers=self.providers,
        )
        return self._batched(model, stored.manifest.tuned_batch_rows(threads, self.providers[0]))

    def _batched(self, model: LoadedModel, tuned: int | None) -> LoadedModel:
        """`model` with its rows per batch: the setting, else what `model tune` recorded, else the default
        (logged when the version was tuned, to say whether its value is used)."""
        model.max_batch_rows, source = batch_rows(self.max_batch_rows, tuned)
        if tuned is None:
            return model
        log.info(
            "model_batch_rows",
            model=model.name,
            version=model.version,
            max_batch_rows=model.max_batch_rows,
            source=source,
            tuned=tuned,
        )
        return model

    def forget_refusal(self, name: str, version: str) -> None:
        """Allow another attempt at a version refused before (a new desired state names it)."""
        self._refused.pop((name, version), None)

    def keep_only(self, name: str, versions: Iterable[str]) -> None:
        """Unload the versions of `name` not in `versions` (batches in flight keep their own reference)."""
        keep = set(versions)
        for key in [k for k in self._loaded if k[0] == name and k[1] not in keep]:
            del self._loaded[key]


def refusal_of(name: str, version: str, error: Exception) -> ModelLoadError:
    """`error`, raised while loading a version, as the ModelLoadError that refuses it."""
    if isinstance(error, ModelLoadError):
        return error
    if isinstance(error, StreamscoreError):  # ours (an unreadable manifest, a missing file) say what happened
        cause = str(error)
    else:  # MemoryError has no message; OSError's names the file
        cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return ModelLoadError(
        f"model {name} version {version} cannot be loaded ({cause}); it is refused and what served before keeps "
        "serving: fix or remove its folder, or push the model again as a new version"
    )
