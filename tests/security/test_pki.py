"""The local CA: one CA per data dir, one certificate per thing unless a new one is asked for explicitly."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotbridge_local.pki import CertificateExists, CertificateMissing, LocalCA, common_name


def test_existing_certificate_is_returned_never_silently_reissued(tmp_path: Path) -> None:
    # GIVEN a CA with no certificate for lamp-1
    ca = LocalCA(tmp_path / "pki")
    # WHEN it is looked up, then ensured twice
    with pytest.raises(CertificateMissing):
        ca.device("lamp-1")
    first = ca.ensure_device("lamp-1").cert_pem.read_bytes()
    second = ca.ensure_device("lamp-1").cert_pem.read_bytes()
    # THEN the lookup failed without creating anything, and ensuring issued exactly one certificate
    assert first == second == ca.device("lamp-1").cert_pem.read_bytes()


def test_reissue_must_be_asked_for(tmp_path: Path) -> None:
    # GIVEN a thing with a certificate
    ca = LocalCA(tmp_path / "pki")
    old = ca.issue_device("lamp-1").cert_pem.read_bytes()
    # WHEN a new one is issued without, then with, replace
    with pytest.raises(CertificateExists):
        ca.issue_device("lamp-1")
    new = ca.issue_device("lamp-1", replace=True).cert_pem.read_bytes()
    # THEN only the explicit request replaced it
    assert new != old


def test_pem_and_der_are_the_same_certificate_and_key(tmp_path: Path) -> None:
    # GIVEN a device certificate
    cert = LocalCA(tmp_path / "pki").ensure_device("esp-1")
    # WHEN both encodings are loaded
    pem = x509.load_pem_x509_certificate(cert.cert_pem.read_bytes())
    der = x509.load_der_x509_certificate(cert.cert_der.read_bytes())
    key_pem = serialization.load_pem_private_key(cert.key_pem.read_bytes(), None)
    key_der = serialization.load_der_private_key(cert.key_der.read_bytes(), None)
    # THEN they agree, the CN is the thing name, and the key matches the certificate
    assert pem == der
    assert common_name(cert.cert_pem) == "esp-1"
    assert key_pem.public_key() == key_der.public_key() == pem.public_key()
    # AND the private keys are readable by their owner only
    assert cert.key_pem.stat().st_mode & 0o077 == 0 and cert.key_der.stat().st_mode & 0o077 == 0


def test_device_certificate_verifies_against_the_ca_and_server_cert_names_loopback(tmp_path: Path) -> None:
    # GIVEN the CA, a device certificate and the broker certificate
    ca = LocalCA(tmp_path / "pki")
    device = ca.ensure_device("lamp-1")
    server = ca.server()
    # WHEN TLS contexts load them as a client and a server would
    client_ctx = ssl.create_default_context(cafile=str(ca.ca_pem))
    client_ctx.load_cert_chain(str(device.cert_pem), str(device.key_pem))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(server.cert_pem), str(server.key_pem))
    # THEN the server certificate is valid for 127.0.0.1 and localhost
    san = x509.load_pem_x509_certificate(server.cert_pem.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_concurrent_first_use_creates_one_ca(tmp_path: Path) -> None:
    # GIVEN an empty data dir and four parts of the stack starting at once
    directory = tmp_path / "pki"
    issued: list[bytes] = []

    def issue(thing: str) -> None:
        cert = LocalCA(directory).ensure_device(thing)
        issued.append(cert.cert_pem.read_bytes())

    threads = [threading.Thread(target=issue, args=(f"t{i}",)) for i in range(4)]
    # WHEN each asks for a device certificate
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN all four certificates were signed by the one CA on disk
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    for pem in issued:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca_cert)
