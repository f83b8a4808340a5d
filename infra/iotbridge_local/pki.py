"""The local certificate authority: what AWS IoT's X.509 device auth is, on one machine.

Layout under `{data_dir}/pki/` (created on first use, reused afterwards):

    ca.pem  ca.der  ca.key.pem          the CA (key readable by its owner only)
    server.pem  server.key.pem          the broker, for 127.0.0.1 and localhost
    devices/{thing}/cert.pem|der, key.pem|der

A device certificate's subject CN is the thing name: Mosquitto turns it into
the MQTT username (`use_identity_as_username`), as AWS IoT turns the
certificate into the principal a policy is evaluated for. Every file exists in
PEM (CPython, Mosquitto) and the device files also in DER (MicroPython's ssl
module loads DER only). Keys are EC P-256: small and quick for an ESP32, and
accepted by AWS IoT.

Issuing is explicit: `device(thing)` returns an existing certificate and
never creates one; `ensure_device(thing)` creates it only if absent;
`issue_device(thing)` refuses to replace one unless told to. A file lock makes
concurrent processes (the stack, a test, the CLI) agree on a single CA.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotbridge_contract import names

CA_NAME = "iotbridge local CA"
SERVER_NAME = "localhost"
VALIDITY = dt.timedelta(days=3650)
# Certificates are back-dated a little so a device whose clock is slightly behind still accepts them.
BACKDATE = dt.timedelta(hours=1)


class CertificateMissing(LookupError):
    """No certificate was issued for that thing (use `ensure_device` or `issue_device`)."""


class CertificateExists(FileExistsError):
    """A certificate for that thing exists already; pass replace=True to issue a new one."""


@dataclass(frozen=True)
class DeviceCert:
    """Every file a device needs, in both encodings."""

    thing: str
    ca_pem: Path
    ca_der: Path
    cert_pem: Path
    cert_der: Path
    key_pem: Path
    key_der: Path


@dataclass(frozen=True)
class ServerCert:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def write_atomically(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write atomically: a reader never sees half a key or certificate."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _common_name(name: str) -> x509.NameAttribute:
    # X.509 suggests at most 64 characters for a CN, but thing names go to 128; OpenSSL
    # and Mosquitto read longer ones fine, so the suggestion is not enforced here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        return x509.NameAttribute(NameOID.COMMON_NAME, name, _validate=False)


def _key_bytes(key: ec.EllipticCurvePrivateKey, encoding: serialization.Encoding) -> bytes:
    return key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class LocalCA:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).resolve()
        self.ca_pem = self.dir / "ca.pem"
        self.ca_der = self.dir / "ca.der"
        self.ca_key = self.dir / "ca.key.pem"
        self.devices_dir = self.dir / "devices"

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> LocalCA:
        return cls(Path(data_dir) / "pki")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- the CA itself -------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the CA on first use; afterwards a no-op."""
        with self._locked():
            self._ensure_ca()

    def _ensure_ca(self) -> None:
        if self.ca_pem.exists() and self.ca_key.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomically(self.ca_key, _key_bytes(key, serialization.Encoding.PEM), secret=True)
        write_atomically(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
        write_atomically(self.ca_pem, cert.public_bytes(serialization.Encoding.PEM))

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _sign(
        self, common_name: str, key: ec.EllipticCurvePrivateKey, *, server: bool
    ) -> x509.Certificate:
        ca_cert, ca_key = self._load_ca()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([_common_name(common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    # -- the broker's certificate ----------------------------------------------------------

    def server(self) -> ServerCert:
        """The broker's certificate for 127.0.0.1 and localhost (created once)."""
        paths = ServerCert(self.ca_pem, self.dir / "server.pem", self.dir / "server.key.pem")
        with self._locked():
            self._ensure_ca()
            if not (paths.cert_pem.exists() and paths.key_pem.exists()):
                key = ec.generate_private_key(ec.SECP256R1())
                cert = self._sign(SERVER_NAME, key, server=True)
                write_atomically(paths.key_pem, _key_bytes(key, serialization.Encoding.PEM), secret=True)
                write_atomically(paths.cert_pem, cert.public_bytes(serialization.Encoding.PEM))
        return paths

    # -- device certificates -----------------------------------------------------------------

    def _device_paths(self, thing: str) -> DeviceCert:
        d = self.devices_dir / names.device_name(thing)
        return DeviceCert(
            thing=thing,
            ca_pem=self.ca_pem,
            ca_der=self.ca_der,
            cert_pem=d / "cert.pem",
            cert_der=d / "cert.der",
            key_pem=d / "key.pem",
            key_der=d / "key.der",
        )

    @staticmethod
    def _complete(paths: DeviceCert) -> bool:
        return all(p.exists() for p in (paths.cert_pem, paths.cert_der, paths.key_pem, paths.key_der))

    def device(self, thing: str) -> DeviceCert:
        """The existing certificate of `thing`; raises CertificateMissing, never issues one."""
        paths = self._device_paths(thing)
        if not (self._complete(paths) and self.ca_pem.exists()):
            raise CertificateMissing(f"no certificate issued for thing {thing!r}")
        return paths

    def ensure_device(self, thing: str) -> DeviceCert:
        """The certificate of `thing`, issued now only if it has none."""
        paths = self._device_paths(thing)
        with self._locked():
            self._ensure_ca()
            if not self._complete(paths):
                self._issue(paths)
        return paths

    def issue_device(self, thing: str, *, replace: bool = False) -> DeviceCert:
        """Issue a new certificate for `thing` (CN = thing name)."""
        paths = self._device_paths(thing)
        with self._locked():
            self._ensure_ca()
            if self._complete(paths) and not replace:
                raise CertificateExists(f"thing {thing!r} has a certificate already")
            self._issue(paths)
        return paths

    def _issue(self, paths: DeviceCert) -> None:
        paths.cert_pem.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(paths.thing, key, server=False)
        write_atomically(paths.key_der, _key_bytes(key, serialization.Encoding.DER), secret=True)
        write_atomically(paths.key_pem, _key_bytes(key, serialization.Encoding.PEM), secret=True)
        write_atomically(paths.cert_der, cert.public_bytes(serialization.Encoding.DER))
        write_atomically(paths.cert_pem, cert.public_bytes(serialization.Encoding.PEM))


def common_name(cert_pem: Path) -> str:
    """The subject CN of a PEM certificate (what the broker will use as username)."""
    cert = x509.load_pem_x509_certificate(Path(cert_pem).read_bytes())
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value.decode() if isinstance(value, bytes) else value
