"""`streamscore broker ...`: start, stop and inspect the local Kafka broker, and create topics.

`streamscore/cli.py` owns the top-level parser; it calls `add_parser(subparsers)` and, for the
`broker` command, `run(args)`. Results go to stdout (the bootstrap address, the status line),
progress and errors to stderr. Exit codes: 0 ok, 1 an expected failure (message printed),
3 `status` of a stopped broker (as LSB init scripts do), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from broker import cluster, local
from broker.config import DEFAULT_CONTROLLER_PORT, DEFAULT_HOME, DEFAULT_PORT
from schemas.errors import StreamscoreError
from transport.admin import create_topics

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
EXIT_INTERRUPTED = 130


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `broker start|stop|status|topics create` to the main CLI's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_HOME,
        help="folder of jars, data and logs (default: %(default)s)",
    )
    common.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="client port on 127.0.0.1 (default: %(default)s)",
    )
    common.add_argument(
        "--controller-port",
        type=int,
        default=DEFAULT_CONTROLLER_PORT,
        help="KRaft controller port on 127.0.0.1 (default: %(default)s)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=local.DEFAULT_START_TIMEOUT_S,
        help="seconds to wait for the broker (default: %(default)s)",
    )

    parser = subparsers.add_parser("broker", help="run a local Apache Kafka broker or cluster (needs java and mvn)")
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start",
        parents=[common],
        help="start the broker (if needed) and print its bootstrap address",
    )
    start.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="1: one broker in --dir; N: a cluster of N nodes in --dir/node-<i>, on ports from --port up (default 1)",
    )
    actions.add_parser("stop", parents=[common], help="stop the broker")
    actions.add_parser("status", parents=[common], help="print running or stopped, the pid and the address")
    topics = actions.add_parser("topics", help="manage topics on the broker")
    topic_actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = topic_actions.add_parser("create", parents=[common], help="create topics and wait until they are usable")
    create.add_argument("names", nargs="+", metavar="NAME", help="topic names")
    create.add_argument("--partitions", type=int, default=1, help="partitions per topic (default: %(default)s)")
    create.add_argument("--bootstrap-servers", default="", help="another broker (default: the local one at --port)")
    return parser  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed `broker` command; return the process exit code."""
    config = local.BrokerConfig(home=args.dir, port=args.port, controller_port=args.controller_port)
    try:
        return _dispatch(args, config)
    except StreamscoreError as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, config: local.BrokerConfig) -> int:
    command = args.broker_command
    found = cluster.Cluster.found_at(args.dir)
    if command == "start":
        if args.nodes > 1 or found is not None:
            nodes = cluster.Cluster.at(args.dir, args.nodes, port=args.port) if found is None else found
            print(cluster.start(nodes, timeout_s=max(args.timeout, 120.0), progress=_say), flush=True)
        else:
            print(local.start(config, timeout_s=args.timeout, progress=_say), flush=True)
        return EXIT_OK
    if command == "stop":
        stopped = cluster.stop(found) if found is not None else local.stop(config, timeout_s=args.timeout)
        _say("broker stopped" if stopped else "broker was not running")
        return EXIT_OK
    if command == "status":
        return _print_status(cluster.status(found) if found is not None else [local.status(config)])
    return _create_topics(args, found.bootstrap if found is not None else config.address)


def _print_status(statuses: list[local.BrokerStatus]) -> int:
    for number, status in enumerate(statuses, start=1):
        node = f"node {number} " if len(statuses) > 1 else ""
        state = f"running pid={status.pid}" if status.running else "stopped"
        print(f"{node}{state} address={status.address}", flush=True)
    return EXIT_OK if all(status.running for status in statuses) else EXIT_NOT_RUNNING


def _create_topics(args: argparse.Namespace, address: str) -> int:
    if args.partitions < 1:
        _say(f"error: --partitions must be at least 1, got {args.partitions}")
        return EXIT_FAILED
    bootstrap = args.bootstrap_servers or address
    coroutine = create_topics(bootstrap, args.names, args.partitions, timeout_s=args.timeout)
    asyncio.run(coroutine)
    _say(f"topics ready on {bootstrap}: {', '.join(args.names)} ({args.partitions} partitions)")
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
