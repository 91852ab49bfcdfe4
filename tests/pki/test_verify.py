"""check_peer_cert: every reason a peer is refused, and what it returns when accepted.
The revocation source here is a plain set (pure unit test); test_mtls.py runs the same
contract with the SQLite-backed store behind a real TLS server."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from edgeward.pki import certs
from edgeward.pki.errors import PeerRejected
from edgeward.pki.verify import Verifier, WrongKind, check_peer_cert, check_server_cert


@pytest.fixture
def ca(now: datetime):
    key = certs.generate_key()
    return certs.create_ca(key, "unit", now), key


def leaf(ca, template: certs.Template, now: datetime, days: int = 30):
    ca_cert, ca_key = ca
    return certs.issue(
        ca_cert, ca_key, certs.generate_key().public_key(), template, now, timedelta(days=days)
    )


def test_accepts_node_and_admin_and_returns_identity(ca, now) -> None:
    node = leaf(ca, certs.node_template("edge-1"), now)
    der = node.public_bytes(serialization.Encoding.DER)
    identity = check_peer_cert(der, ca[0], set().__contains__, now, expect="node")
    assert (identity.kind, identity.node_id, identity.serial) == (
        "node",
        "edge-1",
        node.serial_number,
    )
    admin = leaf(ca, certs.admin_template("alice", "viewer"), now)
    identity = check_peer_cert(admin, ca[0], set().__contains__, now, expect="admin")
    assert (identity.kind, identity.name, identity.role) == ("admin", "alice", "viewer")


def test_refusal_reasons(ca, now) -> None:
    node = leaf(ca, certs.node_template("edge-1"), now)
    foreign_key = certs.generate_key()
    foreign_ca = certs.create_ca(foreign_key, "foreign", now)
    foreign = leaf((foreign_ca, foreign_key), certs.node_template("edge-1"), now)
    no_client_auth = leaf(
        ca, certs.Template("edge-1", uris=("edgeward://node/edge-1",), server_auth=True), now
    )
    server = leaf(ca, certs.server_template("central", ["localhost"]), now)
    dns_only = leaf(ca, certs.Template("edge-1", dns_names=("edge-1",), client_auth=True), now)
    no_revocations: set[int] = set()
    cases = [
        (None, now, no_revocations, "presented no client certificate"),
        (b"", now, no_revocations, "presented no client certificate"),
        (b"\x30\x03\x02\x01\x01", now, no_revocations, "unreadable"),
        (foreign, now, no_revocations, "not issued by this edgeward CA"),
        (node, now - timedelta(hours=1), no_revocations, "not valid before"),
        (node, now + timedelta(days=30), no_revocations, "expired at"),
        (no_client_auth, now, no_revocations, "is not a client certificate"),
        (server, now, no_revocations, r"central 'central'\) is not a client certificate"),
        (dns_only, now, no_revocations, "no valid edgeward identity"),
        (node, now, {node.serial_number}, r"serial [0-9a-f]+ \(node 'edge-1'\) is revoked"),
    ]
    for cert, when, revoked, reason in cases:
        with pytest.raises(PeerRejected, match=reason) as caught:
            check_peer_cert(cert, ca[0], revoked.__contains__, when)
        assert not isinstance(caught.value, WrongKind)


def test_wrong_kind_is_a_permission_problem(ca, now) -> None:
    admin = leaf(ca, certs.admin_template("alice", "admin"), now)
    with pytest.raises(WrongKind, match=r"admin certificate .* node certificate required"):
        check_peer_cert(admin, ca[0], set().__contains__, now, expect="node")


def test_verifier_uses_its_clock_unless_now_is_given(ca, now) -> None:
    node = leaf(ca, certs.node_template("edge-1"), now, days=1)
    later = now + timedelta(days=2)
    verifier = Verifier(ca[0], set().__contains__, clock=lambda: later)
    with pytest.raises(PeerRejected, match="expired"):
        verifier.check_peer(node)
    assert verifier.check_peer(node, now=now).node_id == "edge-1"


def test_check_server_cert(ca, now) -> None:
    server = leaf(ca, certs.server_template("central", ["localhost"]), now)
    assert check_server_cert(server, ca[0], now).name == "central"
    node = leaf(ca, certs.node_template("edge-1"), now)
    with pytest.raises(PeerRejected, match="not an edgeward central server certificate"):
        check_server_cert(node, ca[0], now)
