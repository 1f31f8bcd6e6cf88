"""SASL and TLS on a real broker: workers and producers authenticate, encrypt, and fail clearly.

A second local broker (beside the session's plain one) listens on PLAINTEXT (topics are created
there), SASL_PLAINTEXT and SASL_SSL (PLAIN and SCRAM-SHA-256, user alice), SSL (server certificate
only) and MTLS (SSL that requires a client certificate). Certificates come from a throwaway CA made
with `openssl` at test time (`tests/certs.py`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from broker import local
from demo.models import install_model, make_mlp
from producer.client import FeatureProducer
from schemas.codec import InferenceResponse, decode_response
from schemas.errors import BrokerUnavailableError
from tests.certs import TestCertificates, make_certificates, openssl_available
from tests.conftest import REPO
from tests.harness import run_burst
from transport.admin import create_topics
from worker.runner import Worker
from worker.settings import Settings

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(not openssl_available(), reason="the security tests make certificates with openssl"),
]

USER, PASSWORD = "alice", "alice-secret"
ROWS = 6
FAILURE_BOUND_S = 10.0  # a refused connection must be reported well within this


@dataclass(frozen=True)
class SecureBroker:
    """The running second broker and the PKI it was started with."""

    config: local.BrokerConfig
    certs: TestCertificates

    def client(self, listener: str, **options: Any) -> dict[str, Any]:
        """Connection settings (as `Settings` fields) for one of the broker's listeners."""
        protocol = "SSL" if listener == "MTLS" else listener
        return {"bootstrap_servers": self.config.address_of(listener), "security_protocol": protocol, **options}

    def sasl(self, listener: str, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
        """Connection settings of user alice on a SASL listener."""
        tls = {"ssl_cafile": str(self.certs.ca)} if listener == "SASL_SSL" else {}
        return self.client(listener, sasl_mechanism=mechanism, sasl_username=USER, sasl_password=password, **tls)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A second broker with SASL, SSL and mutual-TLS listeners, running for this module."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    config = local.BrokerConfig(
        home=tmp_path_factory.mktemp("kafka-secure"),
        port=local.free_port(),
        controller_port=local.free_port(),
        libs=REPO / ".kafka" / "libs",
        sasl_port=local.free_port(),
        ssl_port=local.free_port(),
        mtls_port=local.free_port(),
        sasl_ssl_port=local.free_port(),
        users={USER: PASSWORD},
        ssl_keystore=certs.server_keystore,
        ssl_truststore=certs.ca,
    )
    try:  # a broker that fails to answer in time is stopped too
        local.start(config, timeout_s=120.0)
        yield SecureBroker(config, certs)
    finally:
        local.stop(config)


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """A model folder with the mlp, version 1."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    return root


@pytest.fixture
async def settings(secure_broker: SecureBroker, model_root: Path) -> Settings:
    """Worker settings on fresh topics (created over PLAINTEXT); connection fields still plain."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-in", f"{prefix}-out", f"{prefix}-in.DLT"]
    await create_topics(secure_broker.config.address, names, partitions=1)
    return Settings(
        bootstrap_servers=secure_broker.config.address,
        input_topic=names[0],
        results_topic=names[1],
        dead_letter_topic=names[2],
        group_id=f"g-{prefix}",
        model_root=str(model_root),
        model_name="mlp",
        log_format="console",
        worker_id="test-secure-worker",
    )


async def test_worker_scores_over_sasl_plain(secure_broker: SecureBroker, settings: Settings) -> None:
    """Over SASL_PLAINTEXT with PLAIN, requests produced by alice are all scored and read back."""
    await assert_scores_end_to_end(settings.replace(**secure_broker.sasl("SASL_PLAINTEXT", "PLAIN")))


async def test_worker_scores_over_sasl_scram(secure_broker: SecureBroker, settings: Settings) -> None:
    """Over SASL_PLAINTEXT with SCRAM-SHA-256 (credential made at format time), every request is scored."""
    await assert_scores_end_to_end(settings.replace(**secure_broker.sasl("SASL_PLAINTEXT", "SCRAM-SHA-256")))


async def test_worker_reads_the_sasl_password_from_a_file(
    secure_broker: SecureBroker, settings: Settings, tmp_path: Path
) -> None:
    """With STREAMSCORE_SASL_PASSWORD_FILE (a mounted secret) and no password variable, every request is scored."""
    secret = tmp_path / "sasl-password"
    secret.write_text(PASSWORD + "\n")
    options = {**secure_broker.sasl("SASL_PLAINTEXT", "PLAIN"), "sasl_password": "", "sasl_password_file": str(secret)}

    await assert_scores_end_to_end(settings.replace(**options))


async def test_worker_scores_over_ssl(secure_broker: SecureBroker, settings: Settings) -> None:
    """Over SSL, trusting only the test CA (server certificate for 127.0.0.1), every request is scored."""
    await assert_scores_end_to_end(
        settings.replace(**secure_broker.client("SSL", ssl_cafile=str(secure_broker.certs.ca)))
    )


async def test_worker_scores_over_mutual_tls(secure_broker: SecureBroker, settings: Settings) -> None:
    """On the listener that requires a client certificate, a worker presenting one scores every request."""
    certs = secure_broker.certs
    connection = secure_broker.client(
        "MTLS", ssl_cafile=str(certs.ca), ssl_certfile=str(certs.client_certificate), ssl_keyfile=str(certs.client_key)
    )
    await assert_scores_end_to_end(settings.replace(**connection))


async def test_worker_scores_over_sasl_ssl(secure_broker: SecureBroker, settings: Settings) -> None:
    """Over SASL_SSL (SCRAM-SHA-256 inside TLS), every request is scored."""
    await assert_scores_end_to_end(settings.replace(**secure_broker.sasl("SASL_SSL", "SCRAM-SHA-256")))


async def test_wrong_sasl_password_stops_the_worker_at_start(
    secure_broker: SecureBroker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password: the worker raises BrokerUnavailableError naming the broker, within seconds,
    and the log says the authentication failed."""
    wrong = settings.replace(**secure_broker.sasl("SASL_PLAINTEXT", "PLAIN", password="not-the-password"))

    elapsed, error = await timed_start_failure(wrong)

    assert elapsed < FAILURE_BOUND_S
    assert wrong.bootstrap_servers in str(error)
    assert "SaslAuthenticationFailed" in caplog.text


async def test_client_that_does_not_trust_the_ca_cannot_connect(
    secure_broker: SecureBroker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Over SSL with only the system CAs: the worker raises BrokerUnavailableError naming the broker,
    within seconds, and the log says the certificate could not be verified."""
    untrusting = settings.replace(**secure_broker.client("SSL"))

    elapsed, error = await timed_start_failure(untrusting)

    assert elapsed < FAILURE_BOUND_S
    assert untrusting.bootstrap_servers in str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_mutual_tls_listener_refuses_a_client_without_certificate(secure_broker: SecureBroker) -> None:
    """The MTLS listener really requires a client certificate: a producer trusting the CA but
    presenting none is refused with BrokerUnavailableError naming the broker."""
    connection = secure_broker.client("MTLS", ssl_cafile=str(secure_broker.certs.ca))
    producer = FeatureProducer(topic="unused", **connection)

    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=connection["bootstrap_servers"]):
        await producer.start()

    assert time.monotonic() - started < FAILURE_BOUND_S


# --- helpers ----------------------------------------------------------------------------------


async def assert_scores_end_to_end(settings: Settings) -> None:
    """Produce ROWS requests with FeatureProducer, run a burst worker, read every result back,
    all three over the connection that `settings` describes."""
    async with FeatureProducer(topic=settings.input_topic, model="mlp", **connection_of(settings)) as producer:
        ids = await producer.send_rows(np.random.default_rng(0).random((ROWS, 8), dtype=np.float32))

    assert 0 == await run_burst(settings, timeout_s=30.0)

    results = await read_results(settings, expect=ROWS)
    assert sorted(ids) == sorted(result.id for result in results)
    assert {("mlp", "1")} == {(result.model_name, result.model_version) for result in results}


async def timed_start_failure(settings: Settings) -> tuple[float, BrokerUnavailableError]:
    """Run a worker that must fail to connect (one attempt, short timeouts); the time it took and the error."""
    worker = Worker(settings.replace(burst=True, retry_attempts=1, retry_max_s=1.0, request_timeout_ms=3000))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as raised:
        await asyncio.wait_for(worker.run(), FAILURE_BOUND_S * 2)
    return time.monotonic() - started, raised.value


def connection_of(settings: Settings) -> dict[str, Any]:
    """The connection fields of `settings`, as FeatureProducer keyword arguments."""
    names = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file")
    files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        **{name: getattr(settings, name) for name in names + files},
    }


async def read_results(settings: Settings, *, expect: int, timeout_s: float = 20.0) -> list[InferenceResponse]:
    """The responses on the results topic, read over the settings' connection, once `expect` arrived."""
    consumer = AIOKafkaConsumer(
        settings.results_topic,
        **settings.kafka_options(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    found: list[InferenceResponse] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(found) < expect:
                batches = await consumer.getmany(timeout_ms=200)
                found += [decode_response(r.value) for part in batches.values() for r in part if r.value]
    finally:
        await consumer.stop()
    return found
