"""Throwaway TLS material for the security tests, made with the `openssl` CLI at test time.

A CA signs a server certificate for 127.0.0.1 (and localhost) and a client certificate. Keys are
unencrypted PKCS#8 EC keys, as Kafka's PEM keystore reads them. Nothing here is ever committed:
the files live in a pytest temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
CLIENT_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TestCertificates:
    """The PEM files of one throwaway PKI."""

    __test__ = False  # not a test class, despite its name

    ca: Path  # the CA certificate: clients trust it, the broker checks client certificates with it
    server_keystore: Path  # the server's key, certificate and the CA: Kafka's `ssl.keystore.location`
    client_certificate: Path  # the client's certificate and the CA
    client_key: Path


def openssl_available() -> bool:
    """Whether the `openssl` CLI is on PATH."""
    return shutil.which("openssl") is not None


def make_certificates(folder: Path) -> TestCertificates:
    """Write a CA, a server certificate for 127.0.0.1 and a client certificate into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    _openssl(
        "req", "-x509", *_new_key(ca_key), "-out", ca, "-days", DAYS, "-subj", "/CN=streamscore test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    server_key, server = _signed(folder, "server", "/CN=127.0.0.1", SERVER_EXTENSIONS, ca, ca_key)
    client_key, client = _signed(folder, "client", "/CN=streamscore test client", CLIENT_EXTENSIONS, ca, ca_key)
    keystore = folder / "server-keystore.pem"
    keystore.write_text(server_key.read_text() + server.read_text() + ca.read_text())
    chain = folder / "client-chain.pem"
    chain.write_text(client.read_text() + ca.read_text())
    return TestCertificates(ca=ca, server_keystore=keystore, client_certificate=chain, client_key=client_key)


def _signed(folder: Path, name: str, subject: str, extensions: str, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    """A new key and a certificate for it signed by the CA, with `extensions`."""
    key, request, certificate = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    extensions_file = folder / f"{name}.ext"
    extensions_file.write_text(extensions)
    _openssl("req", "-new", *_new_key(key), "-out", request, "-subj", subject)
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", certificate, "-days", DAYS, "-extfile", extensions_file,
    )  # fmt: skip
    return key, certificate


def _new_key(path: Path) -> list[str | Path]:
    """`openssl req` arguments for a new unencrypted P-256 key written (PKCS#8) to `path`."""
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path]


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed (exit {result.returncode}): {result.stderr.strip()}")
