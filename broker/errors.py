"""The errors of the local broker and its topics.

ConfigError (schemas.errors)
└── LocalBrokerError        the local broker cannot be fetched, started or reached
    └── ToolMissingError    `java` or `mvn` is not installed
"""

from __future__ import annotations

from schemas.errors import ConfigError


class LocalBrokerError(ConfigError):
    """The local broker cannot be fetched, formatted, started or reached; the message says why."""


class ToolMissingError(LocalBrokerError):
    """`java` (17+) or `mvn` is not on PATH, so the local broker cannot run."""
