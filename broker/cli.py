"""`streamscore broker ...`: start, stop and inspect the local Kafka broker, and create topics.

`streamscore/cli.py` owns the top-level parser; it calls `add_parser(subparsers)` and, for the
`broker` command, `run(args)`. Results go to stdout (the bootstrap address, the status line),
progress and errors to stderr. `start --acls` turns the authorizer on (`BrokerConfig(authorizer=True)`):
clients then authenticate with SASL PLAIN on `--sasl-port` as the users of a users file, which
`start` writes with random passwords when it is missing; `topics create --acls` authenticates as
its `admin`, the super user. Exit codes: 0 ok, 1 an expected failure (message printed),
3 `status` of a stopped broker (as LSB init scripts do), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sys
from pathlib import Path

from broker import cluster, local
from broker.config import (
    ACL_USERS,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_HOME,
    DEFAULT_PORT,
    DEFAULT_SASL_PORT,
    SUPER_USER,
    USERS_FILE,
    parse_users,
)
from broker.errors import LocalBrokerError
from schemas.errors import StreamscoreError
from transport.admin import create_topics
from transport.connection import Connection

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

    acls = argparse.ArgumentParser(add_help=False)
    acls.add_argument(
        "--acls",
        action="store_true",
        help="check ACLs (KRaft's StandardAuthorizer, admin the super user); clients use SASL PLAIN on --sasl-port",
    )
    acls.add_argument(
        "--sasl-port",
        type=int,
        default=DEFAULT_SASL_PORT,
        help="with --acls: the SASL_PLAINTEXT port on 127.0.0.1 (default: %(default)s)",
    )
    acls.add_argument(
        "--users",
        type=Path,
        default=None,
        help=f"with --acls: a file of name=password lines, admin among them (default: <dir>/{USERS_FILE}, "
        f"which start writes with random passwords for {', '.join(ACL_USERS)} when it is missing)",
    )

    parser = subparsers.add_parser("broker", help="run a local Apache Kafka broker or cluster (needs java and mvn)")
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start",
        parents=[common, acls],
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
    create = topic_actions.add_parser(
        "create", parents=[common, acls], help="create topics and wait until they are usable (--acls: as admin)"
    )
    create.add_argument("names", nargs="+", metavar="NAME", help="topic names")
    create.add_argument("--partitions", type=int, default=1, help="partitions per topic (default: %(default)s)")
    create.add_argument("--bootstrap-servers", default="", help="another broker (default: the local one at --port)")
    return parser  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed `broker` command; return the process exit code."""
    try:
        return _dispatch(args, broker_config(args))
    except StreamscoreError as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


def broker_config(args: argparse.Namespace) -> local.BrokerConfig:
    """The local broker's configuration from the command line; with `--acls`, the authorizer on, the
    SASL_PLAINTEXT listener open and the users file read (written first by `start` if missing)."""
    config = local.BrokerConfig(home=args.dir, port=args.port, controller_port=args.controller_port)
    if not getattr(args, "acls", False):
        return config
    path = args.users or args.dir / USERS_FILE
    if not path.exists() and args.broker_command == "start":
        write_users(path)
    try:
        users = parse_users(path.read_text(), str(path))
    except OSError as error:
        raise LocalBrokerError(f"cannot read the users file {path} (--users): {error}") from error
    return dataclasses.replace(config, sasl_port=args.sasl_port, users=users, authorizer=True)


def write_users(path: Path) -> None:
    """A new users file (mode 600): ACL_USERS, each with a random password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{name}={secrets.token_urlsafe(18)}\n" for name in ACL_USERS)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    _say(f"wrote users {', '.join(ACL_USERS)} with random passwords to {path} ({SUPER_USER} is the super user)")


def _dispatch(args: argparse.Namespace, config: local.BrokerConfig) -> int:
    command = args.broker_command
    found = cluster.Cluster.found_at(args.dir)
    if command == "start" and config.authorizer:
        return _start_with_acls(args, config, found)
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
    if config.authorizer:
        return _create_topics(args, admin_connection(config, args.bootstrap_servers))
    return _create_topics(args, found.bootstrap if found is not None else config.address)


def _start_with_acls(args: argparse.Namespace, config: local.BrokerConfig, found: cluster.Cluster | None) -> int:
    if args.nodes > 1 or found is not None:
        raise LocalBrokerError("--acls starts one broker, not a cluster (--nodes 1, a --dir without node-* folders)")
    if authorizer_running(config) is False:
        raise LocalBrokerError(
            f"the broker in {args.dir} already runs without ACLs: stop it (`streamscore broker stop`), "
            "then start it with --acls"
        )
    local.start(config, timeout_s=args.timeout, progress=_say)
    address = config.address_of("SASL_PLAINTEXT")
    users = args.users or args.dir / USERS_FILE
    _say(f"ACLs checked: clients connect with SASL_PLAINTEXT, mechanism PLAIN, to {address} as a user of {users}")
    print(address, flush=True)
    return EXIT_OK


def authorizer_running(config: local.BrokerConfig) -> bool | None:
    """Whether the broker running in the config's folder checks ACLs (None: none runs there)."""
    if local.read_pid(config) is None or not config.properties_file.is_file():
        return None
    return "authorizer.class.name=" in config.properties_file.read_text()


def admin_connection(config: local.BrokerConfig, bootstrap: str = "") -> Connection:
    """The super user's SASL PLAIN connection to the broker (or to `bootstrap`)."""
    return Connection(
        bootstrap_servers=bootstrap or config.address_of("SASL_PLAINTEXT"),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=SUPER_USER,
        sasl_password=config.users[SUPER_USER],
    )


def _print_status(statuses: list[local.BrokerStatus]) -> int:
    for number, status in enumerate(statuses, start=1):
        node = f"node {number} " if len(statuses) > 1 else ""
        state = f"running pid={status.pid}" if status.running else "stopped"
        print(f"{node}{state} address={status.address}", flush=True)
    return EXIT_OK if all(status.running for status in statuses) else EXIT_NOT_RUNNING


def _create_topics(args: argparse.Namespace, target: str | Connection) -> int:
    if args.partitions < 1:
        _say(f"error: --partitions must be at least 1, got {args.partitions}")
        return EXIT_FAILED
    connection = target if isinstance(target, Connection) else Connection(args.bootstrap_servers or target)
    coroutine = create_topics(connection, args.names, args.partitions, timeout_s=args.timeout)
    asyncio.run(coroutine)
    _say(f"topics ready on {connection.bootstrap_servers}: {', '.join(args.names)} ({args.partitions} partitions)")
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
