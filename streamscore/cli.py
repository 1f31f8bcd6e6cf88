"""The `streamscore` command: `worker`, `produce`, `collect`, `score`, `dlq`, `model`, `broker`.

This is the edge: the only module that reads `os.environ`. It builds each subcommand's parser
from the module that carries the subcommand out, gives the client commands their connection
and topic defaults from the environment, and hands the parsed flags on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker import cli as broker_cli
from producer import cli as producer_cli
from producer import collect as collect_cli
from producer import dlq_cli
from producer import score as score_cli
from registry import cli as registry_cli
from registry.settings import RegistrySettings
from schemas.config import from_sources
from schemas.errors import ConfigError, ModelLoadError, ModelNotFoundError
from schemas.topics import DEFAULT_INPUT_TOPIC, DEFAULT_RESULTS_TOPIC, dead_letter_topic_of
from transport.connection import AT_LEAST_ONCE, CONNECTION_FIELDS, Connection
from worker import cli as worker_cli


@dataclass(frozen=True)
class ClientEnvironment(Connection):
    """What `produce`, `collect` and `dlq` take from the worker's environment variables (`dlq replay` its guarantee)."""

    input_topic: str = DEFAULT_INPUT_TOPIC
    results_topic: str = DEFAULT_RESULTS_TOPIC
    dead_letter_topic: str = ""  # empty: "<input_topic>.DLT"
    guarantee: str = AT_LEAST_ONCE  # of `dlq replay`: exactly-once sends it in one transaction
    transactional_id_prefix: str = ""


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="streamscore", description="Serve ONNX models over Kafka with the Open Inference Protocol."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker_cli.add_parser(commands)
    env = from_sources(ClientEnvironment, os.environ)
    connection = {name: getattr(env, name) or None for name in CONNECTION_FIELDS}
    producer_cli.add_parser(commands).set_defaults(topic=env.input_topic, **connection)
    collect_cli.add_parser(commands).set_defaults(
        results_topic=env.results_topic,
        dead_letter_topic=env.dead_letter_topic or dead_letter_topic_of(env.input_topic),
        **connection,
    )
    score_cli.add_parser(commands).set_defaults(
        topic=env.input_topic,
        results_topic=env.results_topic,
        dead_letter_topic=env.dead_letter_topic or dead_letter_topic_of(env.input_topic),
        **connection,
    )
    dlq_parsers = dlq_cli.add_parser(commands)
    for dlq_parser in dlq_parsers:
        dlq_parser.set_defaults(topic=env.dead_letter_topic or dead_letter_topic_of(env.input_topic), **connection)
    dlq_parsers[1].set_defaults(guarantee=env.guarantee, transactional_id_prefix=env.transactional_id_prefix)
    broker_cli.add_parser(commands)
    registry_cli.add_parser(commands)
    return parser


def run_model(args: argparse.Namespace) -> int:
    """`streamscore model ...`: settings from the environment and the `model` flags."""
    overrides = {
        "model_root": args.model_root,
        "bootstrap_servers": args.bootstrap_servers,
        "control_topic": args.control_topic,
    }
    return registry_cli.run(args, from_sources(RegistrySettings, os.environ, overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamscore` console command."""
    try:
        parser = make_parser()
    except ConfigError as error:
        print(f"streamscore: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    handlers: dict[str, Any] = {
        "worker": lambda args: worker_cli.run(args, os.environ),
        "model": run_model,
        "produce": producer_cli.run,
        "collect": collect_cli.run,
        "score": score_cli.run,
        "dlq": dlq_cli.run,
        "broker": broker_cli.run,
    }
    try:
        return int(handlers[args.command](args))
    except (ConfigError, ModelLoadError, ModelNotFoundError) as error:
        print(f"streamscore {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
