"""docker-compose.yml agrees with the code: real settings, created topics, reachable broker."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from worker.metrics import Metrics
from worker.settings import Settings, from_sources, setting_names

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
ROOT = COMPOSE_FILE.parent
MONITORING = {"prometheus", "blackbox", "grafana"}
# Series the dashboard may query besides the workers' own: Prometheus's and the blackbox exporter's.
FOREIGN_SERIES = {"up", "probe_success"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The services of docker-compose.yml."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whether written as a mapping or a list."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def worker_settings(services: dict[str, Any]) -> Settings:
    """The settings a worker container reads from its compose environment."""
    return from_sources(environment(services["worker"]))


def created_topics(services: dict[str, Any]) -> dict[str, int]:
    """Topic name -> partitions, from the `kafka-topics.sh --create` lines of the topics service."""
    script = "\n".join(services["topics"]["command"])
    topics = {}
    for line in script.splitlines():
        if "kafka-topics.sh" in line and "--create" in line:
            name = re.search(r"--topic\s+(\S+)", line)
            partitions = re.search(r"--partitions\s+(\d+)", line)
            assert name and partitions, line
            topics[name.group(1)] = int(partitions.group(1))
    return topics


def advertised_addresses(services: dict[str, Any]) -> set[str]:
    """The host:port pairs the kafka service advertises to clients."""
    listeners = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    return {listener.split("://", 1)[1] for listener in listeners.split(",")}


def flag(command: list[str], name: str) -> str:
    """The value after `name` in an exec-form command."""
    return command[command.index(name) + 1]


def test_services_exist(services: dict[str, Any]) -> None:
    """The compose file defines the kafka, topics, worker and producer services."""
    assert {"kafka", "topics", "worker", "producer"} <= set(services)


def test_kafka_is_the_apache_image_in_kraft_mode(services: dict[str, Any]) -> None:
    """The broker is apache/kafka, one node acting as broker and controller, health-checked."""
    kafka = services["kafka"]
    env = environment(kafka)

    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_worker_runs_two_replicas(services: dict[str, Any]) -> None:
    """Two worker replicas share the input topic's partitions."""
    assert services["worker"]["deploy"]["replicas"] == 2


def test_every_streamscore_variable_is_a_setting(services: dict[str, Any]) -> None:
    """Each STREAMSCORE_* variable in the compose file is one the worker reads."""
    known = set(setting_names())
    used = {name for service in services.values() for name in environment(service) if name.startswith("STREAMSCORE_")}

    assert used
    assert set() == used - known


def test_worker_topics_are_created(services: dict[str, Any]) -> None:
    """The input, results and dead-letter topics of the worker are created by the topics service."""
    settings = worker_settings(services)
    topics = created_topics(services)

    assert set() == {
        settings.input_topic,
        settings.results_topic,
        settings.dead_letter_topic_name,
    } - set(topics)


def test_input_topic_has_a_partition_per_replica(services: dict[str, Any]) -> None:
    """The input topic has at least as many partitions as worker replicas, so none sits idle."""
    partitions = created_topics(services)[worker_settings(services).input_topic]

    assert partitions >= services["worker"]["deploy"]["replicas"]


def test_worker_bootstrap_is_advertised(services: dict[str, Any]) -> None:
    """The worker connects to an address the kafka service advertises."""
    bootstrap = worker_settings(services).bootstrap_servers

    assert bootstrap in advertised_addresses(services)


def test_worker_waits_for_topics(services: dict[str, Any]) -> None:
    """Workers start only after the topics service has created the topics."""
    condition = services["worker"]["depends_on"]["topics"]["condition"]

    assert condition == "service_completed_successfully"


def test_producer_sends_to_the_worker_input(services: dict[str, Any]) -> None:
    """The producer, on demand only, sends to the worker's input topic on an advertised address."""
    producer = services["producer"]
    command = producer["command"]
    settings = worker_settings(services)

    assert producer["profiles"] == ["produce"]
    assert command[0] == "produce"
    assert settings.input_topic == flag(command, "--topic")
    assert flag(command, "--bootstrap-servers") in advertised_addresses(services)


def test_the_image_holds_every_package_the_distribution_lists() -> None:
    """Each package pyproject.toml installs is copied into the Docker image (a missing one breaks `streamscore`)."""
    packages = tomllib.loads((COMPOSE_FILE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    dockerfile = (COMPOSE_FILE.parent / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.MULTILINE))

    assert set(packages) == copied


def mounted(service: dict[str, Any], target: str) -> Path:
    """The repository file a service mounts at `target`."""
    [source] = [volume.split(":")[0] for volume in service["volumes"] if volume.split(":")[1] == target]
    return ROOT / source


def exported_series() -> set[str]:
    """Every series name the worker's Metrics can export (a counter's _total, a histogram's _bucket ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    families = Metrics(CollectorRegistry()).registry.collect()
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def dashboard_queries() -> list[str]:
    """The PromQL expressions of the Grafana dashboard's panels."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "streamscore.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def scrape_job(name: str) -> dict[str, Any]:
    """One scrape job of the Prometheus configuration the compose file mounts."""
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == name]
    return dict(job)


def test_kafka_image_is_the_local_brokers_version(services: dict[str, Any]) -> None:
    """The compose broker (and topics tool) run the Kafka version the local broker fetches (broker/pom.xml)."""
    [version] = re.findall(r"<kafka.version>(.+)</kafka.version>", (ROOT / "broker" / "pom.xml").read_text())

    assert f"apache/kafka:{version}" == services["kafka"]["image"]
    assert services["kafka"]["image"] == services["topics"]["image"]


def test_monitoring_runs_only_on_request(services: dict[str, Any]) -> None:
    """Prometheus, the blackbox exporter and Grafana start only with `--profile monitoring`."""
    assert MONITORING <= set(services)
    for name in MONITORING:
        assert ["monitoring"] == services[name]["profiles"]


def test_prometheus_scrapes_the_workers_metrics_port(services: dict[str, Any]) -> None:
    """Prometheus finds every worker replica by the service's name, on STREAMSCORE_METRICS_PORT."""
    port = worker_settings(services).metrics_port
    [discovery] = scrape_job("streamscore")["dns_sd_configs"]

    assert port > 0
    assert ROOT / "deploy" / "prometheus" / "prometheus.yml" == mounted(
        services["prometheus"], "/etc/prometheus/prometheus.yml"
    )
    assert (["worker"], port) == (discovery["names"], discovery["port"])
    assert scrape_job("streamscore").get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_probes_the_workers_readiness(services: dict[str, Any]) -> None:
    """The blackbox job asks each worker's /readyz, on the metrics port, through the blackbox service."""
    job = scrape_job("streamscore-readyz")
    [discovery] = job["dns_sd_configs"]
    rules = {rule["target_label"]: rule for rule in job["relabel_configs"]}

    assert (["worker"], worker_settings(services).metrics_port) == (discovery["names"], discovery["port"])
    assert rules["__param_target"]["replacement"].endswith("/readyz")
    assert "blackbox" == rules["__address__"]["replacement"].split(":")[0]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(services: dict[str, Any]) -> None:
    """Grafana's datasource is the compose Prometheus; its dashboard provider loads the mounted dashboard."""
    grafana = services["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "streamscore.yml").read_text())["providers"]
    dashboard = json.loads(mounted(grafana, f"{provider['options']['path']}/streamscore.json").read_text())
    url = urlsplit(datasource["url"])

    assert "prometheus" == url.hostname
    assert f"{url.port}:{url.port}" == services["prometheus"]["ports"][0]
    assert {datasource["uid"]} == {panel["datasource"]["uid"] for panel in dashboard["panels"]}


def test_the_dashboard_has_its_panels() -> None:
    """The dashboard shows throughput, dead letters, batches, latencies, lag, in-flight and readiness."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "streamscore.json").read_text())

    assert [
        "Throughput",
        "Dead letters by stage",
        "Batch rows",
        "Queue vs inference time (p99)",
        "End-to-end latency",
        "Consumer lag",
        "In flight",
        "Readiness",
    ] == [panel["title"] for panel in dashboard["panels"]]


def test_the_dashboard_queries_only_metrics_the_worker_exports() -> None:
    """Every streamscore_* series a panel queries is one worker/metrics.py defines; no other series but up
    and probe_success."""
    queries = re.sub(r"\b(by|without)\s*\([^)]*\)", "", " ".join(dashboard_queries()))  # labels, not series
    words = set(re.findall(r"[a-z_][a-z0-9_]*(?=\{|\[|\))", queries))
    series = {word for word in words if word.startswith("streamscore_")}
    exported = exported_series()

    assert series
    assert set() == series - exported
    assert {word for word in words if not word.startswith("streamscore_")} <= FOREIGN_SERIES
