"""`streamscore worker`: every worker setting as a flag, then the supervisor.

The top-level command line (`streamscore/cli.py`) calls `add_parser(subparsers)` and `run(args,
environ)`. Each field of `Settings` has a flag named after it (`max_batch_rows` ->
`--max-batch-rows`); flags win over the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from schemas.config import default_of, parse_value, setting_name
from worker.settings import Settings, from_sources


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `worker` subcommand, with a flag for every setting."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        allow_abbrev=False,  # `--sasl-password` must not pass for `--sasl-password-file`
        help="score records: N processes in one consumer group",
        description="Consume V2 requests, score them with the model, produce results and dead letters.",
    )
    for item in fields(Settings):
        if item.name not in ENVIRONMENT_ONLY:
            _add_setting_flag(parser, item.name, default_of(Settings, item.name))
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not run: exit 0 if the worker running on --metrics-port of 127.0.0.1 is ready, else 1",
    )
    return parser


#: Settings without a flag: a secret on a command line shows in `ps` (use the variable, or a file).
ENVIRONMENT_ONLY = ("sasl_password",)


def _add_setting_flag(parser: argparse.ArgumentParser, name: str, default: Any) -> None:
    flag, env = "--" + name.replace("_", "-"), setting_name(name)
    if isinstance(default, bool):
        parser.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"env {env} (default {str(default).lower()})",
        )
        return
    shown = ",".join(default) if isinstance(default, tuple) else default
    parser.add_argument(
        flag, default=None, metavar=name.upper(), type=_parser_of(name, default), help=f"env {env} (default {shown!r})"
    )


def _parser_of(name: str, default: Any) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        return parse_value(name, raw, default)

    return parse


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Build the settings, check that the default model can be found, supervise the processes."""
    from worker.logs import configure_logging
    from worker.store import ModelStore
    from worker.supervisor import Supervisor
    from worker.tracing import trace_exporters

    overrides = {item.name: getattr(args, item.name, None) for item in fields(Settings)}
    settings = from_sources(environ, overrides)
    if getattr(args, "check", False):
        return check(settings.metrics_port)
    configure_logging(settings.log_format, settings.log_level, role="supervisor")
    ModelStore.from_settings(settings).default_version()
    return Supervisor(settings, exporters=trace_exporters(environ)).run()


def check(port: int) -> int:
    """`--check`: one line saying whether the running worker is ready; 0 if it is, else 1."""
    from worker.endpoint import check_ready

    if not port:
        print(f"not ready: no metrics port ({setting_name('metrics_port')} or --metrics-port)")
        return 1
    verdict = check_ready(port)
    print(verdict.reason if verdict.ok else f"not ready: {verdict.reason}")
    return 0 if verdict.ok else 1
