"""How settings are named and read: one environment variable per field, typed by its default.

A settings class is a frozen dataclass whose every field has a default. The environment variable
of a field is `STREAMSCORE_` plus its name in upper case (`max_batch_rows` ->
`STREAMSCORE_MAX_BATCH_ROWS`), its flag the name with dashes (`--max-batch-rows`). Flags win over
the environment, the environment over the defaults. Only the command line reads `os.environ`;
it passes the mapping to `from_sources`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from schemas.errors import ConfigError

ENV_PREFIX = "STREAMSCORE_"

S = TypeVar("S")


def setting_name(field_name: str) -> str:
    """The environment variable of a settings field."""
    return ENV_PREFIX + field_name.upper()


def default_of(cls: type[Any], field_name: str) -> Any:
    """The default value of a field of a settings class."""
    return cls.__dataclass_fields__[field_name].default


def parse_value(name: str, raw: str, default: Any) -> Any:
    """Turn the text of a setting into the type of its default, or say what is wrong."""
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{setting_name(name)}={raw!r} is not a valid {type(default).__name__}") from None
    return raw


def from_sources(cls: type[S], environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> S:
    """An instance of the settings class `cls` from the environment, then flag values (parsed) on top."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = environ.get(setting_name(item.name))
        if raw is not None:
            values[item.name] = parse_value(item.name, raw, default_of(cls, item.name))
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return cls(**values)


def setting_names(cls: type[Any]) -> list[str]:
    """Every environment variable a settings class reads."""
    return [setting_name(item.name) for item in dataclasses.fields(cls)]
