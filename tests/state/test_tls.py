"""``rediss://``: TLS to a real redis-server with a certificate made for the test; the server's
certificate is verified (a private CA works only when ``ca_file`` names it)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz_server.state import StoreUnavailable, open_store
from tests.serving import free_port

from .redis_server import PASSWORD, redis_binary


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_pki(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1, as PEM files in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("authz-test-ca"))
        .issuer_name(_name("authz-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    binary = redis_binary()
    _write_pki(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "server.pem"),
         "--tls-key-file", str(tmp_path / "server.key"),
         "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port, tmp_path / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def _wait_up(url: str) -> None:
    with open_store(url) as store:
        deadline = time.monotonic() + 10
        while not store.health().ok:
            assert time.monotonic() < deadline, store.health().detail
            time.sleep(0.05)


def test_rediss_with_the_servers_ca(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ca_file={ca}"
    _wait_up(url)
    with open_store(url) as store:
        assert store.claim("dpop", "jti", 60) and not store.claim("dpop", "jti", 60)


def test_rediss_refuses_a_certificate_it_cannot_verify(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    _wait_up(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ca_file={ca}")
    # The system's authorities never signed the test CA.
    with open_store(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0") as store:
        with pytest.raises(StoreUnavailable, match="certificate verify failed") as caught:
            store.claim("dpop", "jti", 60)
        assert PASSWORD not in str(caught.value)
