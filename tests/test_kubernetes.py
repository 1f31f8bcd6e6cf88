"""deploy/kubernetes agrees with the Kubernetes and KEDA schemas, with the code's settings, and with itself."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.test_compose import COMPOSE_FILE, created_topics
from worker.settings import from_sources, setting_names

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMAS = Path(__file__).resolve().parent / "data" / "keda"
# The oldest release the manifests claim (PodDisruptionBudget's unhealthyPodEvictionPolicy is GA
# from 1.31), and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledObject": "scaledobject", "TriggerAuthentication": "triggerauthentication"}
# KEDA's kafka scaler names for the worker's SASL mechanisms (STREAMSCORE_SASL_MECHANISM).
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def manifests() -> list[dict[str, Any]]:
    """Every object of the files kustomization.yaml lists, in order."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [
        document
        for name in kustomization["resources"]
        for document in yaml.safe_load_all((KUBERNETES / name).read_text())
        if document
    ]


def the(kind: str) -> dict[str, Any]:
    """The one object of `kind`."""
    [found] = [manifest for manifest in manifests() if manifest["kind"] == kind]
    return found


def settings_map() -> dict[str, str]:
    """The ConfigMap's settings."""
    return dict(the("ConfigMap")["data"])


def worker_container() -> dict[str, Any]:
    """The Deployment's worker container."""
    [container] = the("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def kafka_trigger() -> dict[str, str]:
    """The metadata of the ScaledObject's kafka trigger."""
    [trigger] = the("ScaledObject")["spec"]["triggers"]
    assert "kafka" == trigger["type"]
    return dict(trigger["metadata"])


def strict(schema: Any) -> Any:
    """A copy of a CRD schema that refuses unknown fields, as the API server does under kubectl's
    default strict field validation (a CRD's schema alone would prune them silently)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if "properties" in tightened and "additionalProperties" not in tightened:
        tightened["additionalProperties"] = False
    return tightened


def validate_keda(manifest: dict[str, Any]) -> None:
    """Validate a KEDA object against the CRD schema vendored in tests/data/keda."""
    schema = json.loads((KEDA_SCHEMAS / f"{KEDA_KINDS[manifest['kind']]}-v1alpha1.schema.json").read_text())
    assert "keda.sh/v1alpha1" == manifest["apiVersion"]
    jsonschema.Draft202012Validator(strict(schema)).validate(manifest)


def input_partitions() -> set[int]:
    """The input topic's partition counts the project suggests: docker-compose.yml's topics service
    and the README's `broker topics create` line."""
    topic = settings_map()["STREAMSCORE_INPUT_TOPIC"]
    compose = created_topics(yaml.safe_load(COMPOSE_FILE.read_text())["services"])[topic]
    readme = re.findall(
        rf"^streamscore broker topics create {re.escape(topic)} .*--partitions (\d+)",
        (ROOT / "README.md").read_text(),
        flags=re.M,
    )
    assert readme, "the README creates no input topic"
    return {compose, *map(int, readme)}


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists each manifest of the folder, so `kubectl apply -k` applies them all."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}

    assert files == set(kustomization["resources"])


def test_the_manifests_hold_the_expected_kinds() -> None:
    """A Deployment, its PodDisruptionBudget, settings, Secret, registry volume and KEDA's objects."""
    kinds = sorted(manifest["kind"] for manifest in manifests())

    assert [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
        "TriggerAuthentication",
    ] == kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_match_the_kubernetes_schemas(version: str) -> None:
    """Each built-in object is valid for Kubernetes `version`, unknown fields refused (strict)."""
    for manifest in manifests():
        if manifest["kind"] not in KEDA_KINDS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_keda_kinds_match_the_keda_crds() -> None:
    """The ScaledObject and TriggerAuthentication are valid for KEDA's CRD schemas, unknown fields refused."""
    for manifest in manifests():
        if manifest["kind"] in KEDA_KINDS:
            validate_keda(manifest)


def test_a_misspelled_field_is_refused() -> None:
    """The validation is not vacuous: a misspelled field fails both kinds of schema."""
    deployment = copy.deepcopy(the("Deployment"))
    deployment["spec"]["replica"] = 2
    scaled = copy.deepcopy(the("ScaledObject"))
    scaled["spec"]["maxReplicas"] = 2

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)


def test_every_variable_is_a_setting() -> None:
    """Each STREAMSCORE_* name in the ConfigMap and the container's env is one the worker reads."""
    names = set(settings_map()) | {variable["name"] for variable in worker_container()["env"]}

    assert set() == names - set(setting_names())


def test_the_settings_are_valid() -> None:
    """The worker accepts the ConfigMap's values (plus the env the Deployment adds) as its settings."""
    environ = settings_map() | {variable["name"]: "x" for variable in worker_container()["env"]}

    settings = from_sources(environ)

    assert 1 == settings.processes
    assert settings.metrics_port > 0


def test_probes_and_port_use_the_metrics_port() -> None:
    """The container port, the liveness probe (/healthz) and readiness probe (/readyz) use the metrics port."""
    container = worker_container()
    port = int(settings_map()["STREAMSCORE_METRICS_PORT"])
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]

    assert port == ports["metrics"]
    assert {"path": "/healthz", "port": "metrics"} == container["livenessProbe"]["httpGet"]
    assert {"path": "/readyz", "port": "metrics"} == container["readinessProbe"]["httpGet"]
    assert str(port) == annotations["prometheus.io/port"]


def test_the_container_runs_locked_down() -> None:
    """Non-root as the image's user, read-only root filesystem, no privileges, a writable /tmp only."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    container = worker_container()
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"--uid {pod['securityContext']['runAsUser']} " in dockerfile
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert ["ALL"] == container["securityContext"]["capabilities"]["drop"]
    assert {"/tmp"} == {mount["mountPath"] for mount in container["volumeMounts"] if not mount.get("readOnly")}
    assert "memory" in container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_shutdown_grace_fits_in_the_termination_grace() -> None:
    """Kubernetes waits longer than the worker's drain before it kills the pod."""
    pod = the("Deployment")["spec"]["template"]["spec"]

    assert pod["terminationGracePeriodSeconds"] > float(settings_map()["STREAMSCORE_SHUTDOWN_GRACE_S"])


def test_the_model_registry_is_mounted_read_only() -> None:
    """STREAMSCORE_MODEL_ROOT is the claim's mount, read-only; the claim is shared by every node."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    [mount] = [mount for mount in worker_container()["volumeMounts"] if mount["name"] == "models"]
    [volume] = [volume for volume in pod["volumes"] if volume["name"] == "models"]
    claim = the("PersistentVolumeClaim")

    assert settings_map()["STREAMSCORE_MODEL_ROOT"] == mount["mountPath"]
    assert mount["readOnly"] is True
    assert claim["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]
    assert ["ReadWriteMany"] == claim["spec"]["accessModes"]


def test_the_password_file_is_the_mounted_secret() -> None:
    """STREAMSCORE_SASL_PASSWORD_FILE names the Secret's `password` key, mounted; the username comes from it too."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    secret = the("Secret")
    password_file = Path(settings_map()["STREAMSCORE_SASL_PASSWORD_FILE"])
    [mount] = [mount for mount in worker_container()["volumeMounts"] if mount["mountPath"] == str(password_file.parent)]
    [volume] = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    username = {variable["name"]: variable for variable in worker_container()["env"]}["STREAMSCORE_SASL_USERNAME"]

    assert "STREAMSCORE_SASL_PASSWORD_FILE" in setting_names()
    assert "STREAMSCORE_SASL_PASSWORD" not in settings_map()
    assert secret["metadata"]["name"] == volume["secret"]["secretName"]
    assert [{"key": "password", "path": password_file.name}] == volume["secret"]["items"]
    assert {"name": secret["metadata"]["name"], "key": "username"} == username["valueFrom"]["secretKeyRef"]
    assert {"username", "password"} == set(secret["stringData"])


def test_the_scaler_watches_the_workers_group_and_topic() -> None:
    """KEDA reads the lag of the ConfigMap's group on its input topic, at its brokers, for this Deployment."""
    trigger = kafka_trigger()
    settings = settings_map()
    scaled = the("ScaledObject")

    assert settings["STREAMSCORE_GROUP_ID"] == trigger["consumerGroup"]
    assert settings["STREAMSCORE_INPUT_TOPIC"] == trigger["topic"]
    assert settings["STREAMSCORE_BOOTSTRAP_SERVERS"] == trigger["bootstrapServers"]
    assert the("Deployment")["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]


def test_the_scaler_connects_as_the_workers_do() -> None:
    """The scaler's SASL mechanism and TLS match the workers', with credentials from the same Secret."""
    trigger = kafka_trigger()
    settings = settings_map()
    [trigger_spec] = the("ScaledObject")["spec"]["triggers"]
    authentication = the("TriggerAuthentication")
    secret_name = the("Secret")["metadata"]["name"]

    assert KEDA_SASL[settings["STREAMSCORE_SASL_MECHANISM"]] == trigger["sasl"]
    assert ("enable" if settings["STREAMSCORE_SECURITY_PROTOCOL"].endswith("SSL") else "disable") == trigger["tls"]
    assert authentication["metadata"]["name"] == trigger_spec["authenticationRef"]["name"]
    assert {("username", secret_name, "username"), ("password", secret_name, "password")} == {
        (ref["parameter"], ref["name"], ref["key"]) for ref in authentication["spec"]["secretTargetRef"]
    }


def test_the_scaler_never_runs_more_consumers_than_partitions() -> None:
    """maxReplicaCount x processes per pod stays within the input topic's partitions, idle consumers refused."""
    scaled = the("ScaledObject")["spec"]
    consumers = scaled["maxReplicaCount"] * int(settings_map()["STREAMSCORE_PROCESSES"])

    assert consumers <= min(input_partitions())
    assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert "false" == kafka_trigger()["allowIdleConsumers"]


def test_the_lag_threshold_is_above_a_keeping_up_pods_lag() -> None:
    """A pod that keeps up shows its uncommitted records as lag (up to the in-flight limit): the
    threshold must sit above that, or KEDA scales out a pool that is not behind."""
    settings = from_sources(settings_map())
    trigger = kafka_trigger()

    assert int(trigger["lagThreshold"]) > settings.max_in_flight * settings.processes
    assert 0 <= int(trigger["activationLagThreshold"]) < int(trigger["lagThreshold"])
    assert "earliest" == trigger["offsetResetPolicy"]


def test_the_disruption_budget_covers_the_workers() -> None:
    """The PodDisruptionBudget selects the Deployment's pods and lets one go at a time, within minReplicaCount."""
    budget = the("PodDisruptionBudget")["spec"]
    deployment = the("Deployment")["spec"]

    assert deployment["selector"]["matchLabels"] == budget["selector"]["matchLabels"]
    assert budget["maxUnavailable"] < the("ScaledObject")["spec"]["minReplicaCount"]
    assert "replicas" not in deployment, "KEDA owns the replica count; an apply must not reset it"
