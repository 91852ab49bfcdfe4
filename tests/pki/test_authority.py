"""Enrollment, renewal, issuance and revocation against a real CA directory (files and
SQLite). Every refusal shows its error text and that the CA directory did not change."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edgeward.pki import authority, certs
from edgeward.pki.errors import (
    CAExists,
    CANotFound,
    InvalidInput,
    NotFound,
    PeerRejected,
    TokenRejected,
)
from edgeward.pki.store import CAStore
from edgeward.pki.verify import Verifier
from tests.pki.helpers import csr_for, snapshot_dir


def test_init_creates_private_key_files_and_refuses_overwrite(tmp_path: Path, now) -> None:
    ca_dir = tmp_path / "ca"
    with CAStore.init(ca_dir, "t", now) as store:
        fingerprint = certs.fingerprint(store.ca_cert)
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca_dir / "token.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca_dir / "pki.sqlite").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    before = snapshot_dir(ca_dir)
    with pytest.raises(CAExists, match=r"a CA already exists in .*use --force"):
        CAStore.init(ca_dir, "t", now)
    assert snapshot_dir(ca_dir) == before
    with CAStore(ca_dir) as store:
        assert certs.fingerprint(store.ca_cert) == fingerprint


def test_init_force_replaces_and_keeps_the_old_ca_aside(tmp_path: Path, now) -> None:
    ca_dir = tmp_path / "ca"
    with CAStore.init(ca_dir, "t", now) as store:
        old = store.ca_pem
        authority.issue_node(store, "edge-1", now)
    with CAStore.init(ca_dir, "t", now, force=True) as store:
        assert store.ca_pem != old
        assert store.issued() == []
    (aside,) = ca_dir.glob("replaced-*")
    assert (aside / "ca.crt").read_bytes() == old
    with CAStore(aside) as store:
        assert [r.name for r in store.issued()] == ["edge-1"]


def test_open_missing_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CANotFound, match=r"no edgeward CA in .*missing ca.crt.*pki init"):
        CAStore(tmp_path / "nothing")


def test_enroll_issues_a_node_cert_for_the_csr_key_and_spends_the_token(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    key, csr = csr_for("edge-1")
    cert = certs.load_cert(authority.enroll(store, "edge-1", token, csr, now))
    assert cert.public_key() == key.public_key()
    assert certs.identity_of(cert).node_id == "edge-1"
    assert cert.not_valid_after_utc == now + timedelta(days=30)
    (record,) = store.issued()
    assert (record.serial, record.kind, record.name, record.via) == (
        cert.serial_number,
        "node",
        "edge-1",
        "enroll",
    )
    (minted,) = store.tokens()
    assert minted.used_at == now and minted.used_serial == cert.serial_number


def test_reused_token_is_refused_and_nothing_is_issued(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    authority.enroll(store, "edge-1", token, csr_for("edge-1")[1], now)
    before = snapshot_dir(store.path)
    with pytest.raises(TokenRejected, match="already used at"):
        authority.enroll(store, "edge-1", token, csr_for("edge-1")[1], now)
    assert snapshot_dir(store.path) == before
    assert len(store.issued()) == 1


def test_expired_token_is_refused_and_stays_unspent(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now, timedelta(minutes=5))
    before = snapshot_dir(store.path)
    with pytest.raises(TokenRejected, match="expired at"):
        authority.enroll(store, "edge-1", token, csr_for("edge-1")[1], now + timedelta(hours=1))
    assert snapshot_dir(store.path) == before


def test_token_for_another_node_is_refused(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    before = snapshot_dir(store.path)
    with pytest.raises(TokenRejected, match="bound to node 'edge-1', not 'edge-2'"):
        authority.enroll(store, "edge-2", token, csr_for("edge-2")[1], now)
    assert snapshot_dir(store.path) == before
    # The token still works for its own node.
    authority.enroll(store, "edge-1", token, csr_for("edge-1")[1], now)


def test_tampered_token_is_refused(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    before = snapshot_dir(store.path)
    with pytest.raises(TokenRejected, match="not valid for this CA"):
        authority.enroll(store, "edge-1", tampered, csr_for("edge-1")[1], now)
    assert snapshot_dir(store.path) == before


def test_token_of_another_ca_is_refused(store, tmp_path: Path, now) -> None:
    with CAStore.init(tmp_path / "other", "o", now) as other:
        foreign = authority.mint_enrollment_token(other, "edge-1", now)
    before = snapshot_dir(store.path)
    with pytest.raises(TokenRejected, match="not valid for this CA"):
        authority.enroll(store, "edge-1", foreign, csr_for("edge-1")[1], now)
    assert snapshot_dir(store.path) == before


def _rsa_csr() -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@pytest.mark.parametrize(
    ("csr", "error"),
    [
        (b"garbage", "malformed CSR"),
        (_rsa_csr(), "CSR key must be an ECDSA P-256 key, got RSA 2048"),
        (certs.make_csr(certs.generate_key(), "edge-9"), "CSR names node 'edge-9'"),
    ],
)
def test_bad_csr_is_refused_and_token_stays_unspent(store, now, csr: bytes, error: str) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    before = snapshot_dir(store.path)
    with pytest.raises(InvalidInput, match=error):
        authority.enroll(store, "edge-1", token, csr, now)
    assert snapshot_dir(store.path) == before
    assert store.tokens()[0].used_at is None


def test_invalid_node_id_on_enroll_is_refused(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    before = snapshot_dir(store.path)
    with pytest.raises(InvalidInput, match="invalid node id 'Edge 1'"):
        authority.enroll(store, "Edge 1", token, csr_for("edge-1")[1], now)
    assert snapshot_dir(store.path) == before


def test_renew_reissues_for_the_same_node_with_the_new_key(store, now) -> None:
    token = authority.mint_enrollment_token(store, "edge-1", now)
    current = authority.enroll(store, "edge-1", token, csr_for("edge-1")[1], now)
    later = now + timedelta(days=21)
    assert certs.should_renew(certs.load_cert(current), later)
    new_key, csr = csr_for("edge-1")
    renewed = certs.load_cert(authority.renew(store, current, csr, later))
    assert certs.identity_of(renewed).node_id == "edge-1"
    assert renewed.public_key() == new_key.public_key()
    assert renewed.not_valid_after_utc == later + timedelta(days=30)
    assert not certs.should_renew(renewed, later)
    assert (
        store.issued()[-1].via
        == f"renew:{certs.format_serial(certs.load_cert(current).serial_number)}"
    )


def test_renew_refuses_revoked_expired_foreign_or_non_node_certs(store, tmp_path, now) -> None:
    node = authority.issue_node(store, "edge-1", now)
    admin = authority.issue_admin(store, "alice", "admin", now)
    with CAStore.init(tmp_path / "other", "o", now) as other:
        foreign = authority.issue_node(other, "edge-1", now)
    csr = csr_for("edge-1")[1]
    cases = [
        (node.cert_pem, now + timedelta(days=31), "expired at"),
        (foreign.cert_pem, now, "not issued by this edgeward CA"),
        (admin.cert_pem, now, "node certificate required"),
    ]
    before = snapshot_dir(store.path)
    for cert_pem, when, error in cases:
        with pytest.raises(InvalidInput, match=rf"cannot renew: .*{error}"):
            authority.renew(store, cert_pem, csr, when)
    assert snapshot_dir(store.path) == before
    authority.revoke(store, "edge-1", now)
    with pytest.raises(InvalidInput, match=r"cannot renew: .*revoked"):
        authority.renew(store, node.cert_pem, csr, now)


def test_renew_refuses_csr_naming_another_node(store, now) -> None:
    node = authority.issue_node(store, "edge-1", now)
    before = snapshot_dir(store.path)
    with pytest.raises(InvalidInput, match="CSR names node 'edge-2'"):
        authority.renew(store, node.cert_pem, csr_for("edge-2")[1], now)
    assert snapshot_dir(store.path) == before


def test_revoke_by_node_id_revokes_all_its_certs_and_verifier_refuses(store, now) -> None:
    first = authority.issue_node(store, "edge-1", now)
    second = authority.issue_node(store, "edge-1", now)
    other = authority.issue_node(store, "edge-2", now)
    verifier = Verifier.from_store(store, clock=lambda: now)
    assert verifier.check_peer(first.cert_pem).node_id == "edge-1"
    revoked = authority.revoke(store, "edge-1", now, "decommissioned")
    assert sorted(revoked) == sorted([first.serial, second.serial])
    assert authority.revoke(store, "edge-1", now) == []  # idempotent
    for issued in (first, second):
        with pytest.raises(PeerRejected, match="is revoked"):
            verifier.check_peer(issued.cert_pem)
    assert verifier.check_peer(other.cert_pem).node_id == "edge-2"
    assert {(s, r) for s, _, r in store.revoked()} == {
        (first.serial, "decommissioned"),
        (second.serial, "decommissioned"),
    }


def test_revoke_by_serial_and_prefixes(store, now) -> None:
    a = authority.issue_node(store, "edge-1", now)
    b = authority.issue_node(store, "edge-1", now)
    assert authority.revoke(store, certs.format_serial(a.serial), now) == [a.serial]
    assert authority.revoke(store, f"serial:{certs.format_serial(b.serial)}", now) == [b.serial]
    c = authority.issue_node(store, "edge-2", now)
    assert authority.revoke(store, "node:edge-2", now) == [c.serial]


def test_revoke_unknown_or_ambiguous_target_is_refused(store, now) -> None:
    issued = authority.issue_node(store, "edge-1", now)
    hex_serial = certs.format_serial(issued.serial)
    # A node whose id is that serial's hex makes the bare value ambiguous.
    assert len(hex_serial) <= 63
    authority.issue_node(store, hex_serial, now)
    before = snapshot_dir(store.path)
    with pytest.raises(NotFound, match="no node or certificate serial 'nobody'"):
        authority.revoke(store, "nobody", now)
    with pytest.raises(NotFound, match="no certificate with serial abc"):
        authority.revoke(store, "serial:abc", now)
    with pytest.raises(NotFound, match="no certificate was issued to node 'ghost'"):
        authority.revoke(store, "node:ghost", now)
    with pytest.raises(InvalidInput, match="both a node id and a serial"):
        authority.revoke(store, hex_serial, now)
    assert snapshot_dir(store.path) == before


def test_issue_server_and_admin_record_their_kind(store, now) -> None:
    server = authority.issue_server(store, "central", ["central.example.org", "10.0.0.1"], now)
    admin = authority.issue_admin(store, "alice", "viewer", now)
    assert server.key_pem and admin.key_pem
    assert certs.load_private_key(admin.key_pem).public_key() == admin.cert.public_key()
    kinds = {(r.kind, r.name, r.role) for r in store.issued()}
    assert kinds == {("central", "central", None), ("admin", "alice", "viewer")}


def test_verify_cert_of_central_server(store, now) -> None:
    server = authority.issue_server(store, "central", ["localhost"], now)
    identity = authority.verify_cert(store, server.cert_pem, now)
    assert (identity.kind, identity.name) == ("central", "central")
    authority.revoke(store, f"serial:{certs.format_serial(server.serial)}", now)
    with pytest.raises(PeerRejected, match="is revoked"):
        authority.verify_cert(store, server.cert_pem, now)


def test_expired_cert_issued_in_the_past_is_refused(store, now) -> None:
    past = now - timedelta(days=60)
    old = authority.issue_node(store, "edge-1", past)
    with pytest.raises(PeerRejected, match="expired at"):
        Verifier.from_store(store).check_peer(old.cert_pem, now=now)
