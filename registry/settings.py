"""What the `model` commands read from the environment and their flags: the registry and Kafka."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from artifacts.registry import DEFAULT_MODEL_ROOT
from schemas.topics import DEFAULT_CONTROL_TOPIC, DEFAULT_RESULTS_TOPIC, shadow_topic_of
from transport.connection import Connection


@dataclass(frozen=True)
class RegistrySettings(Connection):
    """The registry folder, the control topic and the results topics (same variables as the worker's)."""

    model_root: str = DEFAULT_MODEL_ROOT
    control_topic: str = DEFAULT_CONTROL_TOPIC
    results_topic: str = DEFAULT_RESULTS_TOPIC
    shadow_topic: str = ""  # empty: "<results_topic>.shadow"

    @property
    def shadow_topic_name(self) -> str:
        """Where shadow versions' results go: the setting, or `<results_topic>.shadow`."""
        return self.shadow_topic or shadow_topic_of(self.results_topic)

    def replace(self, **changes: Any) -> RegistrySettings:
        """A copy with some fields changed (settings are frozen)."""
        return dataclasses.replace(self, **changes)
