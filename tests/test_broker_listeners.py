"""The optional SASL and TLS listeners of the local broker: the properties and format arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import local
from broker.config import scram_arguments, security_properties, server_properties
from broker.errors import LocalBrokerError

PEM = Path("/pki")


def secure_config(**changes: object) -> local.BrokerConfig:
    """A config with every optional listener on fixed ports, user alice, and PEM files."""
    values: dict[str, object] = {
        "home": Path("/tmp/k"),
        "port": 29092,
        "controller_port": 29093,
        "sasl_port": 29094,
        "ssl_port": 29095,
        "mtls_port": 29096,
        "sasl_ssl_port": 29097,
        "users": {"alice": "alice-secret"},
        "ssl_keystore": PEM / "server-keystore.pem",
        "ssl_truststore": PEM / "ca.pem",
    }
    return local.BrokerConfig(**{**values, **changes})  # type: ignore[arg-type]


def test_default_config_opens_no_secure_listener() -> None:
    """Without the options, the broker has PLAINTEXT only and no SASL, SSL or SCRAM settings."""
    config = local.BrokerConfig(home=Path("/tmp/k"), port=29092, controller_port=29093)

    assert {"PLAINTEXT": 29092} == config.listeners
    assert {} == security_properties(config)
    assert [] == scram_arguments(config)


def test_every_listener_is_bound_advertised_and_mapped_to_its_protocol() -> None:
    """Each optional listener is bound and advertised on its port; MTLS speaks SSL; the controller
    and inter-broker traffic stay on PLAINTEXT."""
    properties = server_properties(secure_config())

    advertised = (
        "PLAINTEXT://127.0.0.1:29092,SASL_PLAINTEXT://127.0.0.1:29094,SSL://127.0.0.1:29095,"
        "MTLS://127.0.0.1:29096,SASL_SSL://127.0.0.1:29097"
    )
    assert advertised == properties["advertised.listeners"]
    assert f"{advertised},CONTROLLER://127.0.0.1:29093" == properties["listeners"]
    assert (
        "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL"
        == properties["listener.security.protocol.map"]
    )
    assert "PLAINTEXT" == properties["inter.broker.listener.name"]
    assert "CONTROLLER" == properties["controller.listener.names"]


@pytest.mark.parametrize("listener", ["sasl_plaintext", "sasl_ssl"])
def test_sasl_listeners_accept_plain_and_scram_for_the_configured_users(listener: str) -> None:
    """Both SASL listeners enable PLAIN (users in the JAAS line) and SCRAM-SHA-256 (users in metadata)."""
    properties = server_properties(secure_config(users={"alice": "a-1", "bob": "b-2"}))

    prefix = f"listener.name.{listener}"
    assert "PLAIN,SCRAM-SHA-256" == properties[f"{prefix}.sasl.enabled.mechanisms"]
    assert (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="a-1" user_bob="b-2";'
        == properties[f"{prefix}.plain.sasl.jaas.config"]
    )
    assert (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        == properties[f"{prefix}.scram-sha-256.sasl.jaas.config"]
    )


def test_tls_listeners_use_pem_files_and_only_mtls_requires_a_client_certificate() -> None:
    """The keystore and truststore are PEM files; client auth is required on MTLS alone."""
    properties = server_properties(secure_config())

    assert "PEM" == properties["ssl.keystore.type"]
    assert str(PEM / "server-keystore.pem") == properties["ssl.keystore.location"]
    assert "PEM" == properties["ssl.truststore.type"]
    assert str(PEM / "ca.pem") == properties["ssl.truststore.location"]
    assert "none" == properties["ssl.client.auth"]
    assert "required" == properties["listener.name.mtls.ssl.client.auth"]


def test_storage_format_adds_one_scram_credential_per_user() -> None:
    """`kafka-storage format` gets `--add-scram SCRAM-SHA-256=[name=..,password=..]` for each user."""
    config = secure_config(users={"alice": "a-1", "bob": "b-2"})

    assert [
        "--add-scram",
        "SCRAM-SHA-256=[name=alice,password=a-1]",
        "--add-scram",
        "SCRAM-SHA-256=[name=bob,password=b-2]",
    ] == scram_arguments(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"users": {}}, "needs at least one user"),
        ({"users": {"alice": 'quote"d'}}, "must not hold"),
        ({"users": {"alice": "comma,password"}}, "must not hold"),
        ({"ssl_keystore": None}, "needs ssl_keystore"),
        ({"ssl_truststore": None}, "needs ssl_truststore"),
    ],
)
def test_incomplete_or_unsafe_security_options_are_refused(changes: dict[str, object], message: str) -> None:
    """A listener without what it needs, or a credential that would break the JAAS line, is refused."""
    with pytest.raises(LocalBrokerError, match=message):
        secure_config(**changes)


def test_address_of_names_each_listener_and_refuses_a_missing_one() -> None:
    """`address_of` gives a listener's bootstrap address, and says so when it is not configured."""
    assert "127.0.0.1:29096" == secure_config().address_of("MTLS")
    with pytest.raises(LocalBrokerError, match="no SSL listener"):
        local.BrokerConfig().address_of("SSL")
