"""`streamscore model ...`: the registry and the versions in production.

    push FILE --name NAME [--version V]   add a version (registry/push.py)
    list | show NAME                      what exists, what serves, what workers report
    promote NAME VERSION [--require-better METRIC] | rollback NAME  change what serves
    canary NAME VERSION --weight W | canary NAME --end
    shadow NAME VERSION | shadow NAME --end
    optimize NAME VERSION ...             derive an optimized or pruned version (registry/optimize.py)
    tune NAME VERSION ...                 measure batch sizes here, record max_batch_rows (registry/tune.py)
    evaluate NAME [VERSIONS] --data ...   score labelled rows offline, record the metrics (registry/evaluate.py)
    compare NAME ...                      shadow against current (registry/compare.py)

Each subcommand module gives `add_parser(commands)` and `run(args, settings) -> int`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

from artifacts.manifest import MODEL_FILE, Manifest, check_name, version_key
from artifacts.registry import Registry
from registry import bus, compare, evaluate, optimize_cli, push, tune
from registry.metrics import METRICS
from registry.settings import RegistrySettings
from schemas.control import DesiredState, WorkerStatus
from schemas.errors import ConfigError

SUBCOMMANDS = (push, optimize_cli, tune, evaluate, compare)
UNCHECKED = "workers serve it unchecked: push it with `streamscore model push` to have its files verified"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `model` and its subcommands to the `streamscore` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "model",
        help="the model registry and the versions in production",
        description="Push, list and show model versions; promote, roll back, canary, shadow, optimize, tune, evaluate, "
        "compare.",
    )
    parser.add_argument("--model-root", help="the registry folder (env STREAMSCORE_MODEL_ROOT)")
    parser.add_argument("--bootstrap-servers", help="Kafka (env STREAMSCORE_BOOTSTRAP_SERVERS)")
    parser.add_argument("--control-topic", help="env STREAMSCORE_CONTROL_TOPIC")
    commands = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    commands.add_parser("list", help="models, their versions, and what serves")
    show = commands.add_parser("show", help="one model: versions, manifests, desired state, worker reports")
    show.add_argument("name")
    promote = commands.add_parser("promote", help="serve VERSION (the current one becomes the rollback target)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument(
        "--require-better",
        metavar="METRIC",
        choices=METRICS,
        help="refuse unless VERSION's recorded METRIC (model evaluate) is no worse than the current version's",
    )
    rollback = commands.add_parser("rollback", help="serve the previous current version again")
    rollback.add_argument("name")
    canary = commands.add_parser("canary", help="send a share of requests (by request id) to VERSION")
    canary.add_argument("name")
    canary.add_argument("version", nargs="?")
    canary.add_argument("--weight", type=float, help="share of requests, between 0 and 1")
    canary.add_argument("--end", action="store_true", help="end the canary")
    shadow = commands.add_parser("shadow", help="score every request with VERSION too, into the shadow topic")
    shadow.add_argument("name")
    shadow.add_argument("version", nargs="?")
    shadow.add_argument("--end", action="store_true", help="end the shadow")
    return parser


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Run one `model` subcommand."""
    for module in SUBCOMMANDS:
        if args.model_command in module.COMMANDS:
            return int(module.run(args, settings))
    registry = Registry.at(settings.model_root)
    if args.model_command == "list":
        return list_models(registry, settings)
    if args.model_command == "show":
        return show_model(registry, settings, args.name)
    return asyncio.run(change_state(registry, settings, args))


async def change_state(registry: Registry, settings: RegistrySettings, args: argparse.Namespace) -> int:
    """promote, rollback, canary, shadow: publish the model's new desired state."""
    name = check_name("model name", args.name)
    state = (await bus.read_states(settings, settings.control_topic)).get(name) or DesiredState(
        name, current=_highest(registry, name)
    )
    command = args.model_command
    if command == "promote" or (command in ("canary", "shadow") and not args.end):
        _require_version(registry, name, args.version)
    if command == "promote" and args.require_better:
        evaluate.require_better(registry, name, args.version, state.current, args.require_better)
    if command == "promote":
        new = state.promote(args.version)
    elif command == "rollback":
        new = state.rollback()
    elif command == "canary":
        new = state.end_canary() if args.end else state.with_canary(args.version, _weight(args.weight))
    else:
        new = state.end_shadow() if args.end else state.with_shadow(args.version)
    await bus.publish_state(settings, settings.control_topic, new)
    print(f"{name}: {new.change}; current={new.current} canary={_canary(new)} shadow={new.shadow or '-'}")
    return 0


def _highest(registry: Registry, name: str) -> str | None:
    versions = registry.versions(name)
    return versions[-1] if versions else None


def _require_version(registry: Registry, name: str, version: str | None) -> None:
    if not version:
        raise ConfigError(f"give the version of {name}")
    if not registry.has(name, version):
        available = ", ".join(registry.versions(name)) or "none"
        raise ConfigError(f"model {name} has no version {version} in the registry (available: {available})")


def _weight(weight: float | None) -> float:
    if weight is None:
        raise ConfigError("give the canary's share of requests with --weight, e.g. --weight 0.1")
    return weight


def _canary(state: DesiredState) -> str:
    return f"{state.canary.version}@{state.canary.weight:g}" if state.canary else "-"


def list_models(registry: Registry, settings: RegistrySettings) -> int:
    """Print every model: versions, and the desired state if the control topic has one."""
    states = _states_or_none(settings)
    models = registry.models()
    if not models:
        print(f"no models in the registry at {settings.model_root}; add one with `streamscore model push`")
        return 0
    statuses = _statuses(settings, None) if states is not None else []
    print(f"{'model':<20} {'versions':<16} {'current':<8} {'canary':<10} {'shadow':<7} workers serve")
    for name in models:
        print(_list_row(registry, name, (states or {}).get(name), statuses))
    if any(registry.unverified_versions(name) for name in models):
        print(f"(? marks a version copied by hand, without manifest; {UNCHECKED})")
    if states is None:
        print("(the control topic could not be read: * is the highest version, what workers serve without one)")
    return 0


def _list_row(registry: Registry, name: str, state: DesiredState | None, statuses: list[WorkerStatus]) -> str:
    versions, copied = _all_versions(registry, name)
    current = state.current if state else f"{versions[-1]}*"
    serving = Counter(s.current for s in statuses if s.model == name)
    served = ", ".join(f"{v} ({n})" for v, n in sorted(serving.items(), key=lambda kv: str(kv[0]))) or "-"
    shown = ",".join(f"{v}?" if v in copied else v for v in versions)
    return (
        f"{name:<20} {shown:<16} {current or '-':<8} "
        f"{_canary(state) if state else '-':<10} {(state.shadow if state else None) or '-':<7} {served}"
    )


def _all_versions(registry: Registry, name: str) -> tuple[list[str], set[str]]:
    """Every version of `name` (what workers may serve), oldest first, and those copied by hand."""
    copied = registry.unverified_versions(name)
    return sorted([*registry.versions(name), *copied], key=version_key), set(copied)


def show_model(registry: Registry, settings: RegistrySettings, name: str) -> int:
    """Print one model: each version's manifest summary, the desired state, and worker reports."""
    versions, copied = _all_versions(registry, check_name("model name", name))
    if not versions:
        raise ConfigError(f"no model {name} in the registry at {settings.model_root}")
    states = _states_or_none(settings) or {}
    state = states.get(name)
    roles = _roles(state)
    print(f"model {name}")
    for version in versions:
        role = roles.get(version, "")
        if version in copied:
            copied_note = f"unverified (no manifest): {MODEL_FILE} copied by hand; {UNCHECKED}"
            print(f"  version {version:<6} {role:<9} {copied_note}")
        else:
            _print_version(version, registry.manifest(name, version), role)
    if state is not None:
        print(
            f"  desired: {state.change} by {state.by} at {state.updated_at}; rollback to "
            f"{state.previous[-1] if state.previous else '-'}"
        )
    else:
        print(f"  desired: no control record; workers serve the highest version, {versions[-1]}")
    for status in _statuses(settings, name):
        failed = "; ".join(f"{v}: {why}" for v, why in status.failed.items()) or "none"
        print(
            f"  worker {status.worker}: serves {status.current} canary {status.canary or '-'} "
            f"shadow {status.shadow or '-'} (at {status.at}); refused: {failed}"
        )
    return 0


def _print_version(version: str, m: Manifest, role: str) -> None:
    """A pushed version: its manifest's summary, signature, measurements and history."""
    derived = f" from {m.parent}" if m.parent else ""
    print(
        f"  version {version:<6} {role:<9} sha256 {m.sha256[:12]}  {m.size:>9} bytes  opset "
        f"{m.opset.get('', m.opset.get('ai.onnx', '?'))}  {m.created_at}{derived}  {m.source}"
    )
    for spec in m.inputs:
        print(f"      input  {spec.name} {spec.datatype} {spec.shape}")
    for spec in m.outputs:
        print(f"      output {spec.name} {spec.datatype} {spec.shape}")
    if m.measurements:
        print(f"      measured against {m.parent}: {_measured(m.measurements)}")
    for event in m.history:
        measured = _measured(event) if event.get("event") != "evaluate" else ""  # its result says it all
        head = f"      {event.get('at', '')} {event.get('event', '')} {event.get('result', '')}"
        print(f"{head}: {measured}" if measured else head)


def _roles(state: DesiredState | None) -> dict[str, str]:
    if state is None:
        return {}
    roles = {v: "previous" for v in state.previous[-1:]}
    if state.current:
        roles[state.current] = "current"
    if state.canary:
        roles[state.canary.version] = "canary"
    if state.shadow:
        roles[state.shadow] = "shadow"
    return roles


def _measured(values: dict[str, Any]) -> str:
    """One line of an optimization's measurements: sizes, latency, and each output's differences."""
    parts = []
    if "size" in values:
        parts.append(f"size {values.get('parent_size')} -> {values['size']} bytes")
    if "latency_us_per_row" in values:
        parts.append(f"{values.get('parent_latency_us_per_row')} -> {values['latency_us_per_row']} us/row")
    for output, diff in (values.get("outputs") or {}).items():
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in diff.items() if isinstance(v, int | float))
        parts.append(f"{output}: {shown}")
    settings = values.get("settings") or {}
    if settings:
        pruned = (
            f" prune={settings['prune']} {settings['sparsity']:g}" if settings.get("prune", "none") != "none" else ""
        )
        parts.append(f"quantize={settings.get('quantize')} graph={settings.get('graph')}{pruned}")
    return "; ".join(parts)


def _states_or_none(settings: RegistrySettings) -> dict[str, DesiredState] | None:
    try:
        return asyncio.run(asyncio.wait_for(bus.read_states(settings, settings.control_topic), 15))
    except Exception:  # no broker, no topic: show what the registry knows
        return None


def _statuses(settings: RegistrySettings, name: str | None) -> list[WorkerStatus]:
    try:
        found = asyncio.run(asyncio.wait_for(bus.read_statuses(settings, settings.control_topic), 15))
    except Exception:
        return []
    return sorted((s for s in found if name is None or s.model == name), key=lambda s: s.worker)
