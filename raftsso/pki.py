"""The cluster's own certificate authority and the TLS contexts built on it.

``raftsso init`` creates one CA per cluster. Every certificate carries its *role* in the
subject's organizational unit: ``node`` (a replica), ``admin`` (an operator) or ``client``
(an SSO service). Nodes authorise requests by that role only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write, check_private
from raftsso.revocation import canonical_serial

# cryptography (x509, ~20 ms to import) only in the functions that make or read
# certificates: every CLI call and SSO client needs the TLS contexts below, not those.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

ROLES = ("node", "admin", "client")
_CA_YEARS = 10
_LEAF_DAYS = 825


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(cluster_id: str) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftsso"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"raftsso CA {cluster_id}"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, common_name: str, role: str, hosts: tuple[str, ...] = ()) -> Issued:
    """Issue a leaf certificate for ``role``; ``hosts`` become its subject alternative names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "node":
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftsso"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_pair(issued: Issued, cert_path: Path, key_path: Path) -> None:
    atomic_write(cert_path, issued.cert_pem, mode=0o600)
    atomic_write(key_path, issued.key_pem, mode=0o600)


def _base_context(purpose: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    # A private key others can read is refused like seal.key (whoever reads it acts with
    # its role); a missing one is reported by the load below.
    if key.exists():
        check_private(key)
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material ({ca}, {cert}, {key}): {exc}") from None
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server that demands a client certificate from the cluster CA."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)
    # One TLS 1.3 session ticket per full handshake, not OpenSSL's default two: a client
    # keeps only the last one it received (raftsso.remote), and each ticket costs the node
    # a serialise/parse of the session (OpenSSL 3.0 decodes the client certificate's key
    # again, through its slow decoder lookup) and one more write. Measured with callgrind
    # on the server side of a full mutual-TLS handshake: 12.1 M instructions with two
    # tickets, 10.4 M with one. A resumed handshake sends one ticket either way.
    # Resumption keeps (EC)DHE: OpenSSL's server accepts only psk_dhe_ke by default.
    ctx.num_tickets = 1
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS client that presents its certificate and checks the node's name against the CA."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)
    ctx.check_hostname = True
    return ctx


def issued_by(ca: Path, cert: Path) -> bool:
    """Was ``cert`` signed by the CA in ``ca`` (both PEM)? ``ValueError`` if not PEM."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    try:
        x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def peer_identity(peercert: dict[str, Any] | None) -> tuple[str, str]:
    """``(role, common name)`` from a verified peer certificate (``ssl.getpeercert()``)."""
    role = name = ""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "organizationalUnitName":
                role = value
            elif key == "commonName":
                name = value
    return role, name


# -- certificates issued after init (raftsso.certs) -------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """What the cluster records of a certificate: never its key."""

    serial: str  # canonical: lowercase hex, no leading zeros (revocation.canonical_serial)
    name: str
    role: str
    not_before: float
    not_after: float
    fingerprint: str  # SHA-256 of the DER encoding, hex


def describe(cert_pem: bytes) -> CertInfo:
    """Serial, name, role and validity of a PEM certificate (:class:`ConfigError` if it
    is not one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError("not a PEM certificate") from None
    role = name = ""
    for attr in cert.subject:
        if attr.oid == NameOID.ORGANIZATIONAL_UNIT_NAME:
            role = str(attr.value)
        elif attr.oid == NameOID.COMMON_NAME:
            name = str(attr.value)
    return CertInfo(canonical_serial(cert.serial_number), name, role,
                    cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                    cert.fingerprint(hashes.SHA256()).hex())


def peer_serial(peercert: dict[str, Any] | None) -> str | None:
    """The canonical serial of a verified peer certificate (``ssl.getpeercert()``)."""
    raw = (peercert or {}).get("serialNumber")
    try:
        return canonical_serial(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def load_ca(cert_path: Path, key_path: Path) -> Issued:
    """The CA certificate and its private key, for issuing; the key must be 0600 (a CA key
    others can read lets them mint certificates of any role) and must match the
    certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from raftsso.fsutil import read_private

    key_pem = read_private(key_path, limit=64 << 10)
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {cert_path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{cert_path} and {key_path} must be the cluster's CA certificate "
                          "and its unencrypted PEM key") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{cert_path} is not a CA certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC key (raftsso's CA keys are P-256)")
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"{key_path} is not the key of the CA certificate {cert_path}")
    return Issued(cert_pem, key_pem)

