"""Which model versions exist, which serve, and the loaded ones.

Versions come from the registry at the model root (`<name>/<version>/manifest.json` beside
the artifact, verified by sha256 on load) or, for models copied in by hand, from a plain
`<name>/<version>/model.onnx`. What serves comes from the control topic's desired state
(`set_state`); without one, the highest version (or the pinned one) of each model serves.
"""

from __future__ import annotations

from pathlib import Path

from registry.control import DesiredState
from registry.manifest import MANIFEST_FILE, MODEL_FILE, NAME_PATTERN, version_key
from registry.registry import Registry
from registry.storage import StorageError
from schemas.errors import ConfigError, ModelLoadError, ModelNotFoundError
from worker.model import LoadedModel, load_model


class ModelStore:
    """The models under a root directory, loaded on first use and kept while they serve."""

    def __init__(
        self, root: Path, *, default_name: str = "", pinned_version: str = "", intra_op_threads: int = 1
    ) -> None:
        self.root = root
        self.registry = Registry.at(root)
        self.pinned_version = pinned_version
        self.intra_op_threads = intra_op_threads
        self.default_name = default_name or self._only_model()
        self.states: dict[str, DesiredState] = {}
        self.failed: dict[tuple[str, str], str] = {}  # versions refused at load, and why
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._resolved: dict[tuple[str | None, str | None], tuple[str, str]] = {}

    def _only_model(self) -> str:
        names = sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []
        if len(names) != 1:
            raise ModelLoadError(
                f"no default model: {self.root} holds {len(names)} model folders ({', '.join(names)});"
                " set STREAMSCORE_MODEL_NAME"
            )
        return names[0]

    def versions(self, name: str) -> list[str]:
        """The versions of `name` in the registry or on disk, oldest first."""
        folder = self.root / name
        if not NAME_PATTERN.match(name) or not folder.is_dir():
            return []
        found = {p.parent.name for p in folder.glob("*/*") if p.name in (MODEL_FILE, MANIFEST_FILE)}
        return sorted((v for v in found if NAME_PATTERN.match(v)), key=version_key)

    def resolve(self, name: str | None, version: str | None, request_id: str = "") -> tuple[str, str]:
        """Which (name, version) scores a request; ModelNotFoundError if none can.

        A version pinned by the request wins; else the desired state routes the request (its
        canary share is fixed by the request id); else the pinned setting or the highest version.
        """
        state = self.states.get(name or self.default_name) if not version else None
        if state is not None and state.current is not None:
            return state.model, state.route(request_id) or state.current
        found = self._resolved.get((name, version))
        if found is None:
            found = self._resolved[(name, version)] = self._resolve(name, version)
        return found

    def _resolve(self, name: str | None, version: str | None) -> tuple[str, str]:
        name = name or self.default_name
        if version and not NAME_PATTERN.match(version):
            raise ModelNotFoundError(f"model version {version!r} is not a valid version name")
        if not version and name == self.default_name and self.pinned_version:
            version = self.pinned_version
        if version and (name, version) in self._loaded:
            return name, version
        available = self.versions(name)
        if not available:
            raise ModelNotFoundError(f"unknown model {name!r}: no {name}/<version>/{MODEL_FILE} under {self.root}")
        if version and version not in available:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; available: {', '.join(available)}")
        if version:
            return name, version
        serveable = [v for v in available if (name, v) not in self.failed]
        if not serveable:
            reasons = "; ".join(self.failed[(name, v)] for v in available)
            raise ModelNotFoundError(f"no version of model {name!r} can be served: {reasons}")
        return name, serveable[-1]

    def forget_resolution(self, name: str) -> None:
        """Resolve `name` afresh next time (after a version of it was refused)."""
        self._resolved = {key: found for key, found in self._resolved.items() if found[0] != name}

    def set_state(self, state: DesiredState) -> None:
        """Serve what `state` says (its versions must be loaded); versions it drops are unloaded."""
        self.states[state.model] = state
        self._resolved = {key: found for key, found in self._resolved.items() if found[0] != state.model}
        keep = state.versions() | set(state.previous[-1:])
        for key in [k for k in self._loaded if k[0] == state.model and k[1] not in keep]:
            del self._loaded[key]  # batches in flight keep their own reference

    def cached(self, name: str, version: str) -> LoadedModel | None:
        """The loaded model, if it is loaded."""
        return self._loaded.get((name, version))

    def load(self, name: str, version: str) -> LoadedModel:
        """Load, verify and warm up one version (blocking: call it from a thread), and keep it.

        A version refused once is refused again without another try, until `forget_failure`.
        """
        model = self._loaded.get((name, version))
        if model is not None:
            return model
        if (name, version) in self.failed:
            raise ModelLoadError(self.failed[(name, version)])
        try:
            model = self._load(name, version)
        except ModelLoadError as error:
            self.failed[(name, version)] = str(error)
            raise
        self._loaded[(name, version)] = model
        return model

    def _load(self, name: str, version: str) -> LoadedModel:
        threads = self.intra_op_threads
        try:
            if not self.registry.has(name, version):
                return load_model(self.root / name / version / MODEL_FILE, name, version, intra_op_threads=threads)
            manifest = self.registry.manifest(name, version)
            content = self.registry.read_model(name, version)  # sha256 checked against the manifest
        except (StorageError, ConfigError) as error:
            raise ModelLoadError(f"model {name} version {version}: {error}") from error
        if manifest.external_data:  # onnxruntime finds external data beside a file, not beside bytes
            source = self.root / name / version / manifest.artifact
            return load_model(source, name, version, sha256=manifest.sha256, intra_op_threads=threads)
        return load_model(content, name, version, sha256=manifest.sha256, intra_op_threads=threads)

    def forget_failure(self, name: str, version: str) -> None:
        """Allow another attempt at a version refused before (a new desired state names it)."""
        self.failed.pop((name, version), None)
