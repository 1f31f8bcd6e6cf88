"""Model names and versions: what the contract accepts (in headers, control records, the registry).

A name is safe as a folder name and as a header value: letters, digits, '.', '_' and '-', at
most 128, starting with a letter or digit.
"""

from __future__ import annotations

import re

from schemas.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(what: str, value: object) -> str:
    """A model name or version that is safe as a folder name, or ConfigError."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ConfigError(
            f"{what} {value!r} is not valid: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit)"
        )
    return value
