"""Placeholder while `model compare` is written (replaced in the next commits)."""

from __future__ import annotations

import argparse
from typing import Any

from worker.settings import Settings

COMMANDS: tuple[str, ...] = ()


def add_parser(commands: Any) -> None:
    """Adds nothing yet."""


def run(args: argparse.Namespace, settings: Settings) -> int:
    raise NotImplementedError
