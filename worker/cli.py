"""The `streamscore` command: `worker`, `produce`, `broker`.

This is the edge: it reads the environment and the flags once, builds the settings, and hands
them on. Every worker setting has a flag named after it (`max_batch_rows` -> `--max-batch-rows`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from schemas.errors import ConfigError, ModelLoadError, ModelNotFoundError
from worker.settings import Settings, from_sources, parse_value, setting_name


def _parser_of(name: str, default: Any) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        return parse_value(name, raw, default)

    return parse


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for item in fields(Settings):
        default = Settings.__dataclass_fields__[item.name].default
        flag = "--" + item.name.replace("_", "-")
        env = setting_name(item.name)
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"env {env} (default {str(default).lower()})",
            )
        else:
            shown = ",".join(default) if isinstance(default, tuple) else default
            parser.add_argument(
                flag,
                default=None,
                metavar=item.name.upper(),
                type=_parser_of(item.name, default),
                help=f"env {env} (default {shown!r})",
            )


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from broker import cli as broker_cli
    from producer import cli as producer_cli
    from producer import collect as collect_cli
    from registry import cli as registry_cli

    parser = argparse.ArgumentParser(
        prog="streamscore", description="Serve ONNX models over Kafka with the Open Inference Protocol."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="score records: N processes in one consumer group",
        description="Consume V2 requests, score them with the model, produce results and dead letters.",
    )
    _add_setting_flags(worker)
    # produce and collect share the worker's connection and topic settings from the environment
    env = from_sources({k: v for k, v in os.environ.items() if k in _CLIENT_ENV})
    connection = {
        "bootstrap_servers": env.bootstrap_servers,
        "security_protocol": env.security_protocol,
        "sasl_mechanism": env.sasl_mechanism or None,
        "sasl_username": env.sasl_username or None,
        "sasl_password": env.sasl_password or None,
        "ssl_cafile": env.ssl_cafile or None,
        "ssl_certfile": env.ssl_certfile or None,
        "ssl_keyfile": env.ssl_keyfile or None,
    }
    producer_cli.add_parser(commands).set_defaults(topic=env.input_topic, **connection)
    collect_cli.add_parser(commands).set_defaults(
        results_topic=env.results_topic, dead_letter_topic=env.dead_letter_topic_name, **connection
    )
    broker_cli.add_parser(commands)
    registry_cli.add_parser(commands)
    return parser


_CLIENT_ENV = {
    setting_name(name)
    for name in (
        "bootstrap_servers",
        "input_topic",
        "results_topic",
        "dead_letter_topic",
        "security_protocol",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
    )
}


def run_worker(args: argparse.Namespace) -> int:
    """`streamscore worker`: build the settings, check the model, supervise the processes."""
    from worker.logs import configure_logging
    from worker.store import ModelStore
    from worker.supervisor import Supervisor

    overrides = {item.name: getattr(args, item.name, None) for item in fields(Settings)}
    settings = from_sources(os.environ, overrides)
    configure_logging(settings.log_format, settings.log_level, role="supervisor")
    ModelStore(
        settings.model_root_path, default_name=settings.model_name, pinned_version=settings.model_version
    ).resolve(None, None)
    return Supervisor(settings).run()


def run_model(args: argparse.Namespace) -> int:
    """`streamscore model ...`: settings from the environment and the `model` flags."""
    from registry import cli as registry_cli

    overrides = {
        "model_root": args.model_root,
        "bootstrap_servers": args.bootstrap_servers,
        "control_topic": args.control_topic,
    }
    return registry_cli.run(args, from_sources(os.environ, overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamscore` console command."""
    try:
        parser = make_parser()
    except ConfigError as error:
        print(f"streamscore: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "worker":
            return run_worker(args)
        if args.command == "model":
            return run_model(args)
        from broker import cli as broker_cli
        from producer import cli as producer_cli
        from producer import collect as collect_cli

        handlers: dict[str, Any] = {"produce": producer_cli.run, "collect": collect_cli.run, "broker": broker_cli.run}
        return int(handlers[args.command](args))
    except (ConfigError, ModelLoadError, ModelNotFoundError) as error:
        print(f"streamscore {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
