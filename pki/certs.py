"""Pure certificate functions: keys, CSRs, issuance, identity, renewal timing.

Everything takes and returns `cryptography` objects or PEM bytes; the clock is a
parameter. Keys are ECDSA P-256: it is the one key type every TLS stack edgeward
meets handles in both TLS 1.2 and 1.3 (Python ssl/OpenSSL, grpcio/BoringSSL,
openssl s_client), which Ed25519 certificates are not.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeward.pki import names
from edgeward.pki.errors import InvalidInput

CURVE = ec.SECP256R1
# Tolerate a few minutes of clock skew between central and nodes.
BACKDATE = timedelta(minutes=5)
NODE_VALIDITY = timedelta(days=30)
ADMIN_VALIDITY = timedelta(days=90)
SERVER_VALIDITY = timedelta(days=365)
CA_VALIDITY = timedelta(days=3650)
RENEW_FRACTION = 2 / 3

Certificate = x509.Certificate
PrivateKey = ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------- keys


def generate_key() -> PrivateKey:
    return ec.generate_private_key(CURVE())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"cannot read private key: {e}") from None
    _require_p256(key.public_key(), "private key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _require_p256(public_key: object, what: str) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, CURVE
    ):
        raise InvalidInput(f"{what} must be an ECDSA P-256 key, got {_describe_key(public_key)}")


def _describe_key(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {public_key.curve.name}"
    kind = type(public_key).__name__.replace("PublicKey", "").lstrip("_")
    size = getattr(public_key, "key_size", None)
    return f"{kind} {size}" if size else kind


# ---------------------------------------------------------------- CSRs


def make_csr(key: PrivateKey, node_id: str) -> bytes:
    """The CSR a node sends: its own key, CN = node id (the CA sets the SANs)."""
    names.validate_node_id(node_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature and key type."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"malformed CSR: {e}") from None
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"malformed CSR public key: {e}") from None
    _require_p256(public_key, "CSR key")
    if not csr.is_signature_valid:
        raise InvalidInput("CSR signature does not verify")
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str | None:
    values = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def check_csr_for_node(csr: x509.CertificateSigningRequest, node_id: str) -> None:
    """A CSR may name its node (CN); if it does, the name must match."""
    cn = csr_common_name(csr)
    if cn is not None and cn != node_id:
        raise InvalidInput(f"CSR names node {cn!r} but the request is for node {node_id!r}")


# ---------------------------------------------------------------- issuance


@dataclass(frozen=True)
class Template:
    """What goes into a leaf certificate besides keys and validity."""

    common_name: str
    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server_auth: bool = False
    client_auth: bool = False


def create_ca(
    key: PrivateKey, name: str, now: datetime, validity: timedelta = CA_VALIDITY
) -> Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeward"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgeward CA {name}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def issue(
    ca_cert: Certificate,
    ca_key: PrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    template: Template,
    now: datetime,
    validity: timedelta,
    serial: int | None = None,
) -> Certificate:
    """Sign a leaf certificate. Validity is clipped to the CA's own lifetime."""
    _require_p256(public_key, "certificate key")
    if validity <= timedelta(0):
        raise InvalidInput("validity must be positive")
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in template.uris]
    sans += [x509.DNSName(d) for d in template.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in template.ip_addresses]
    usages = []
    if template.server_auth:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if template.client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, template.common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def node_template(node_id: str) -> Template:
    return Template(
        common_name=node_id,
        uris=(names.node_uri(node_id),),
        dns_names=(names.node_dns(node_id),),
        client_auth=True,
    )


def admin_template(name: str, role: str) -> Template:
    return Template(common_name=name, uris=(names.admin_uri(role, name),), client_auth=True)


def server_template(name: str, hosts: list[str]) -> Template:
    """Central's server certificate: each host is a DNS name or an IP address."""
    if not hosts:
        raise InvalidInput("a server certificate needs at least one hostname or IP address")
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(_validate_hostname(host))
    return Template(
        common_name=hosts[0],
        uris=(names.central_uri(name),),
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        server_auth=True,
    )


def _validate_hostname(host: str) -> str:
    labels = host.rstrip(".").split(".")
    ok = len(host) <= 253 and all(
        names.NAME_PATTERN.fullmatch(label.lower()) and not label.endswith("-") for label in labels
    )
    if not ok:
        raise InvalidInput(f"invalid hostname {host!r}")
    return host.rstrip(".").lower()


# ---------------------------------------------------------------- reading certificates


def load_cert(data: bytes) -> Certificate:
    """Read a certificate from PEM or DER bytes."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"malformed certificate: {e}") from None


def cert_pem(cert: Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def format_serial(serial: int) -> str:
    return f"{serial:x}"


def parse_serial(text: str) -> int:
    """Parse a serial as printed by `format_serial` (hex; `0x` and ':' accepted)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InvalidInput(f"invalid serial {text!r}: expected hexadecimal") from None
    if value <= 0:
        raise InvalidInput(f"invalid serial {text!r}: must be positive")
    return value


def identity_uris(cert: Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return [u for u in uris if u.startswith(names.URI_SCHEME)]


def identity_of(cert: Certificate) -> names.Identity:
    """The edgeward identity a certificate carries (exactly one edgeward:// URI SAN)."""
    uris = identity_uris(cert)
    if len(uris) != 1:
        raise InvalidInput(
            f"certificate carries {len(uris)} edgeward identity URIs in its SAN, expected 1"
        )
    kind, name, role = names.parse_identity_uri(uris[0])
    return names.Identity(kind=kind, name=name, role=role, serial=cert.serial_number)


def has_usage(cert: Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return oid in eku


def is_issued_by(cert: Certificate, ca_cert: Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------- renewal timing


def renew_at(cert: Certificate, fraction: float = RENEW_FRACTION) -> datetime:
    """When a certificate should be renewed: at `fraction` of its lifetime."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def should_renew(cert: Certificate, now: datetime, fraction: float = RENEW_FRACTION) -> bool:
    return now >= renew_at(cert, fraction)
