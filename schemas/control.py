"""What serves: the desired state of each model, published to a compacted control topic.

The registry says what exists; the control topic says what serves. Each record is keyed by
the model name and holds its whole desired state (current version, the versions to roll back
to, a canary and a shadow), so that compaction keeps exactly the latest state of each model
and every worker process on every host converges on it.

Workers report what they actually serve, and what they refused to load, to the status topic
(`schemas.topics.status_topic_of`), keyed by `<model>/<worker>`. Routing a request to a version
(`DesiredState.route`) is pure, so that every worker routes the same id the same way.
"""

from __future__ import annotations

import getpass
import hashlib
import socket
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.errors import ConfigError
from schemas.names import check_name


def now() -> str:
    """The current time, ISO 8601 UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def operator() -> str:
    """Who is making a change: user@host."""
    try:
        user = getpass.getuser()
    except OSError:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Canary:
    """A candidate version that scores `weight` (0..1) of the requests, chosen by request id."""

    version: str
    weight: float


@dataclass(frozen=True)
class DesiredState:
    """What one model should serve. Changes return a new state; states are never edited."""

    model: str
    current: str | None = None
    previous: tuple[str, ...] = ()  # versions to roll back to, the most recent last
    canary: Canary | None = None
    shadow: str | None = None
    updated_at: str = ""
    by: str = ""
    change: str = ""  # what the last change was, for `model show`

    def promote(self, version: str) -> DesiredState:
        """Serve `version`; the current version becomes the one to roll back to."""
        previous = self.previous
        if self.current is not None and self.current != version:
            previous = (*previous, self.current)
        canary = None if self.canary is not None and self.canary.version == version else self.canary
        return self._changed(f"promote {version}", current=version, previous=previous, canary=canary)

    def rollback(self) -> DesiredState:
        """Serve the version that was current before, again."""
        if not self.previous:
            raise ConfigError(f"model {self.model} has no earlier version to roll back to")
        return self._changed(
            f"rollback {self.current} -> {self.previous[-1]}",
            current=self.previous[-1],
            previous=self.previous[:-1],
        )

    def with_canary(self, version: str, weight: float) -> DesiredState:
        if not 0.0 < weight < 1.0:
            raise ConfigError(f"a canary weight is a share between 0 and 1 (exclusive), got {weight}")
        if version == self.current:
            raise ConfigError(f"version {version} of {self.model} is already current")
        return self._changed(f"canary {version} at {weight:g}", canary=Canary(version, weight))

    def end_canary(self) -> DesiredState:
        return self._changed("end canary", canary=None)

    def with_shadow(self, version: str) -> DesiredState:
        if version == self.current:
            raise ConfigError(f"version {version} of {self.model} is already current")
        return self._changed(f"shadow {version}", shadow=version)

    def end_shadow(self) -> DesiredState:
        return self._changed("end shadow", shadow=None)

    def _changed(self, change: str, **fields: Any) -> DesiredState:
        return replace(self, updated_at=now(), by=operator(), change=change, **fields)

    def versions(self) -> set[str]:
        """Every version this state needs loaded."""
        found = {self.current, self.shadow, self.canary.version if self.canary else None}
        return {v for v in found if v is not None}

    def route(self, request_id: str) -> str | None:
        """The version that scores `request_id`: the canary for its share, else the current one."""
        if self.canary is not None and canary_share(request_id) < self.canary.weight:
            return self.canary.version
        return self.current


def canary_share(request_id: str) -> float:
    """A number in [0, 1) fixed by the request id: the same id always takes the same route.

    Any str is hashed, even one UTF-8 cannot encode (decoding refuses such ids; "surrogatepass"
    changes the bytes of no other string).
    """
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def encode_state(state: DesiredState) -> bytes:
    return orjson.dumps(asdict(state))


def decode_state(raw: bytes) -> DesiredState:
    """The state a control record holds; ConfigError saying what is wrong when it is not a valid one.

    Names and versions must be valid names, a canary's weight a number between 0 and 1 (exclusive);
    fields this version does not know are ignored, so that older workers read newer records.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"unreadable control record: not JSON ({error})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"unreadable control record: a JSON object was expected, got {type(body).__name__}")
    try:
        return DesiredState(
            model=check_name("model name", body.get("model")),
            current=_version(body.get("current"), "current"),
            previous=tuple(check_name("previous version", v) for v in _list(body.get("previous"), "previous")),
            canary=_canary(body.get("canary")),
            shadow=_version(body.get("shadow"), "shadow"),
            **{name: _text(body.get(name), name) for name in ("updated_at", "by", "change")},
        )
    except ConfigError as error:
        raise ConfigError(f"invalid control record: {error}") from None


def _version(value: object, what: str) -> str | None:
    return None if value is None else check_name(f"{what} version", value)


def _list(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list of versions, got {value!r}")
    return value


def _canary(value: object) -> Canary | None:
    if value is None:
        return None
    fields = value if isinstance(value, dict) else {}
    weight = fields.get("weight")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0.0 < weight < 1.0:
        raise ConfigError(f"a canary is {{version, weight}} with a weight between 0 and 1 (exclusive), got {value!r}")
    return Canary(check_name("canary version", fields.get("version")), float(weight))


def _text(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, got {value!r}")
    return value


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker process serves for one model, and what it refused to load."""

    model: str
    worker: str
    current: str | None
    canary: str | None = None
    shadow: str | None = None
    failed: dict[str, str] = field(default_factory=dict)  # version -> why it is not served
    at: str = ""

    def key(self) -> bytes:
        return f"{self.model}/{self.worker}".encode()


def encode_status(status: WorkerStatus) -> bytes:
    return orjson.dumps(asdict(status))


def decode_status(raw: bytes) -> WorkerStatus:
    """The status a status record holds; ConfigError when it is not one."""
    try:
        return WorkerStatus(**orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError, ValueError) as error:
        raise ConfigError(f"unreadable status record: {error}") from None
