"""Pure certificate functions: what goes into node/admin/server certificates, CSRs,
identity parsing and renewal timing."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeward.pki import certs, names
from edgeward.pki.errors import InvalidInput


@pytest.fixture
def ca(now: datetime) -> tuple[x509.Certificate, certs.PrivateKey]:
    key = certs.generate_key()
    return certs.create_ca(key, "unit", now), key


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_ca_is_p256_ca_with_path_length_zero(ca, now) -> None:
    cert, _key = ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True and bc.path_length == 0
    assert cert.not_valid_after_utc - now == certs.CA_VALIDITY


def test_node_certificate_has_node_uri_dns_client_auth_and_30_days(ca, now) -> None:
    ca_cert, ca_key = ca
    key = certs.generate_key()
    cert = certs.issue(
        ca_cert, ca_key, key.public_key(), certs.node_template("edge-7"), now, timedelta(days=30)
    )
    san = sans(cert)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["edgeward://node/edge-7"]
    assert san.get_values_for_type(x509.DNSName) == ["edge-7.node.edgeward"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == now + timedelta(days=30)
    assert cert.not_valid_before_utc == now - certs.BACKDATE
    assert certs.is_issued_by(cert, ca_cert)
    identity = certs.identity_of(cert)
    assert (identity.kind, identity.node_id, identity.serial) == (
        "node",
        "edge-7",
        cert.serial_number,
    )


def test_validity_is_clipped_to_the_ca(ca, now) -> None:
    ca_cert, ca_key = ca
    cert = certs.issue(
        ca_cert,
        ca_key,
        certs.generate_key().public_key(),
        certs.node_template("n"),
        now,
        timedelta(days=100000),
    )
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_admin_certificate_carries_role(ca, now) -> None:
    ca_cert, ca_key = ca
    cert = certs.issue(
        ca_cert,
        ca_key,
        certs.generate_key().public_key(),
        certs.admin_template("alice", "operator"),
        now,
        certs.ADMIN_VALIDITY,
    )
    identity = certs.identity_of(cert)
    assert (identity.kind, identity.name, identity.role) == ("admin", "alice", "operator")
    assert identity.node_id is None


def test_server_certificate_splits_hosts_into_dns_and_ip(ca, now) -> None:
    ca_cert, ca_key = ca
    template = certs.server_template("central", ["central.example.org", "10.1.2.3", "::1"])
    cert = certs.issue(
        ca_cert, ca_key, certs.generate_key().public_key(), template, now, timedelta(days=1)
    )
    san = sans(cert)
    assert san.get_values_for_type(x509.DNSName) == ["central.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    assert certs.has_usage(cert, ExtendedKeyUsageOID.SERVER_AUTH)
    assert not certs.has_usage(cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert certs.identity_of(cert).kind == "central"


@pytest.mark.parametrize(
    ("hosts", "error"),
    [([], "at least one hostname"), (["bad host"], "invalid hostname"), (["-x.org"], "invalid")],
)
def test_server_template_refuses_bad_hosts(hosts: list[str], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        certs.server_template("central", hosts)


@pytest.mark.parametrize(
    "node_id", ["", "UPPER", "-lead", "a" * 64, "under_score", "dot.ted", "sp ace", "é"]
)
def test_invalid_node_ids_are_refused_with_a_clear_error(node_id: str) -> None:
    with pytest.raises(InvalidInput, match=r"invalid node id .*use 1-63 characters a-z, 0-9"):
        names.validate_node_id(node_id)


@pytest.mark.parametrize("node_id", ["a", "0", "edge-1", "a" * 63, "x-y-z-9"])
def test_valid_node_ids_pass(node_id: str) -> None:
    assert names.validate_node_id(node_id) == node_id


def test_invalid_role_is_refused() -> None:
    with pytest.raises(InvalidInput, match="invalid role 'root': choose one of admin"):
        certs.admin_template("bob", "root")


def test_csr_round_trip_and_name_check() -> None:
    key = certs.generate_key()
    csr = certs.load_csr(certs.make_csr(key, "edge-1"))
    assert certs.csr_common_name(csr) == "edge-1"
    certs.check_csr_for_node(csr, "edge-1")
    with pytest.raises(InvalidInput, match="CSR names node 'edge-1' but the request is for"):
        certs.check_csr_for_node(csr, "edge-2")


def _csr_with(key: object) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "described"),
    [
        (rsa.generate_private_key(65537, 2048), "RSA 2048"),
        (ec.generate_private_key(ec.SECP384R1()), "ECDSA secp384r1"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    ],
)
def test_csr_with_wrong_key_type_is_refused(key: object, described: str) -> None:
    with pytest.raises(InvalidInput, match=f"CSR key must be an ECDSA P-256 key, got {described}"):
        certs.load_csr(_csr_with(key))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_malformed_csr_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="malformed CSR"):
        certs.load_csr(data)


def test_csr_with_broken_signature_is_refused() -> None:
    pem = certs.make_csr(certs.generate_key(), "edge-1")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(der)
    tampered[-5] ^= 0x01  # inside the signature's last integer
    tampered_pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidInput, match="signature does not verify"):
        certs.load_csr(tampered_pem)


def test_should_renew_at_two_thirds_of_lifetime(ca, now) -> None:
    ca_cert, ca_key = ca
    cert = certs.issue(
        ca_cert,
        ca_key,
        certs.generate_key().public_key(),
        certs.node_template("n"),
        now,
        timedelta(days=30),
    )
    at = certs.renew_at(cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert at == cert.not_valid_before_utc + lifetime * 2 / 3
    assert not certs.should_renew(cert, now)
    assert not certs.should_renew(cert, at - timedelta(seconds=1))
    assert certs.should_renew(cert, at)
    assert certs.should_renew(cert, cert.not_valid_after_utc + timedelta(days=1))
    assert certs.should_renew(cert, now + timedelta(days=10), fraction=0.25)


def test_identity_requires_exactly_one_edgeward_uri(ca, now) -> None:
    ca_cert, ca_key = ca
    for uris, error in [
        ((), "carries 0 edgeward identity URIs"),
        (("edgeward://node/a", "edgeward://node/b"), "carries 2 edgeward identity URIs"),
        (("edgeward://node/Bad_Id",), "invalid node id"),
        (("edgeward://printer/x",), "unrecognised edgeward identity URI"),
    ]:
        template = certs.Template(common_name="x", uris=uris, client_auth=True)
        cert = certs.issue(
            ca_cert, ca_key, certs.generate_key().public_key(), template, now, timedelta(days=1)
        )
        with pytest.raises(InvalidInput, match=error):
            certs.identity_of(cert)


def test_serial_format_round_trip() -> None:
    assert certs.parse_serial(certs.format_serial(0xABC123)) == 0xABC123
    assert certs.parse_serial("0xAB:C1:23") == 0xABC123
    with pytest.raises(InvalidInput, match="expected hexadecimal"):
        certs.parse_serial("xyz")


def test_fingerprint_is_sha256_colon_hex(ca, now) -> None:
    cert, _ = ca
    fp = certs.fingerprint(cert)
    assert fp.startswith("sha256:") and len(fp.split(":")) == 33
    assert fp == certs.fingerprint(certs.load_cert(certs.cert_pem(cert)))
    assert fp != certs.fingerprint(certs.create_ca(certs.generate_key(), "other", now))
