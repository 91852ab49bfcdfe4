"""Real mutual-TLS handshakes on loopback: grpclib server with edgeward's contexts and
peer check; grpclib and grpcio clients with various certificates."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgeward.pki import authority, certs
from edgeward.pki.errors import PeerRejected
from edgeward.pki.store import CAStore
from edgeward.pki.tls import server_context
from edgeward.pki.verify import Verifier
from edgeward.proto import v1
from tests.pki.helpers import PemFiles, write_pair
from tests.pki.servers import Pki, Seen, context_for, node_files, serving


async def call_status(
    pki: Pki, client: PemFiles | None, ca_file: Path | None = None
) -> tuple[object, Seen]:
    """One GetStatus call through grpclib; returns (reply or the error, what the server saw)."""
    async with serving(pki) as (port, seen):
        channel = Channel("127.0.0.1", port, ssl=context_for(pki, client, ca_file))
        reply: object
        try:
            reply = await v1.AdminServiceStub(channel).get_status(timeout=10)
        except (GRPCError, StreamTerminatedError, ConnectionError, ssl.SSLError) as e:
            reply = e
        finally:
            channel.close()
    return reply, seen


def server_side_refusal(pki: Pki, client: PemFiles | None) -> str:
    """Why the server context refuses this client, as the server's ssl sees it.

    asyncio's SSL transport drops a failed handshake without sending the alert, so the
    grpclib client above only sees the connection close. Here the same server context
    runs in a plain blocking server on loopback, and its handshake error is returned.
    """
    ctx = server_context(pki.server.cert, pki.server.key, pki.ca_file)
    result: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve_one() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
                    result.append("accepted")
            except ssl.SSLCertVerificationError as e:
                result.append(e.verify_message)
            except ssl.SSLError as e:
                result.append(e.reason or str(e))

        thread = threading.Thread(target=serve_one)
        thread.start()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                context_for(pki, client).wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"x")
                tls.recv(1)
            raw.close()
        finally:
            thread.join(15)
    assert not thread.is_alive()
    return result[0]


def test_valid_node_cert_is_accepted_and_server_sees_node_id(pki: Pki) -> None:
    reply, seen = asyncio.run(call_status(pki, node_files(pki, "edge-1")))
    assert isinstance(reply, v1.GetStatusResponse), reply
    assert reply.nodes_total == 1
    assert [(i.kind, i.node_id) for i in seen.identities] == [("node", "edge-1")]
    assert seen.rejections == []


def assert_refused_in_handshake(reply: object, seen: Seen) -> None:
    # The TLS layer refuses these before any request reaches grpclib.
    assert isinstance(reply, (StreamTerminatedError, ConnectionError, ssl.SSLError)), reply
    assert seen.identities == []
    assert seen.rejections == []


def test_client_without_certificate_is_refused(pki: Pki) -> None:
    reply, seen = asyncio.run(call_status(pki, None))
    assert_refused_in_handshake(reply, seen)
    assert server_side_refusal(pki, None) == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with CAStore.init(tmp_path / "other-ca", "other", now) as other:
        foreign = authority.issue_node(other, "edge-1", now)
    files = write_pair(tmp_path / "foreign", "edge-1", foreign.cert_pem, foreign.key_pem)
    reply, seen = asyncio.run(call_status(pki, files))
    assert_refused_in_handshake(reply, seen)
    assert server_side_refusal(pki, files) == "unable to get local issuer certificate"


def test_expired_certificate_is_refused(pki: Pki) -> None:
    files = node_files(pki, "edge-old", issued_at=datetime.now(UTC) - timedelta(days=40))
    assert certs.load_cert(files.cert.read_bytes()).not_valid_after_utc < datetime.now(UTC)
    reply, seen = asyncio.run(call_status(pki, files))
    assert_refused_in_handshake(reply, seen)
    assert server_side_refusal(pki, files) == "certificate has expired"


def test_revoked_certificate_is_refused_after_handshake(pki: Pki) -> None:
    files = node_files(pki, "edge-2")
    authority.revoke(pki.store, "edge-2", datetime.now(UTC), "key compromise")
    reply, seen = asyncio.run(call_status(pki, files))
    assert isinstance(reply, GRPCError), reply
    assert reply.status == Status.UNAUTHENTICATED
    assert "revoked" in (reply.message or "")
    assert seen.identities == []
    assert len(seen.rejections) == 1 and "revoked" in seen.rejections[0]


def test_certificate_whose_san_is_not_a_node_id_is_refused(pki: Pki, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    key = certs.generate_key()
    template = certs.Template(
        common_name="Not_A_Node",
        uris=("edgeward://node/Not_A_Node",),
        dns_names=("not-a-node.example",),
        client_auth=True,
    )
    cert = certs.issue(
        pki.store.ca_cert, pki.store.ca_key(), key.public_key(), template, now, timedelta(days=1)
    )
    files = write_pair(tmp_path / "odd", "odd", certs.cert_pem(cert), certs.key_pem(key))
    reply, seen = asyncio.run(call_status(pki, files))
    assert isinstance(reply, GRPCError), reply
    assert reply.status == Status.UNAUTHENTICATED
    assert "no valid edgeward identity" in (reply.message or "")
    assert seen.identities == []


def test_admin_certificate_on_node_service_is_permission_denied(pki: Pki, tmp_path: Path) -> None:
    admin = authority.issue_admin(pki.store, "alice", "viewer", datetime.now(UTC))
    files = write_pair(tmp_path / "admin", "alice", admin.cert_pem, admin.key_pem)
    reply, seen = asyncio.run(call_status(pki, files))
    assert isinstance(reply, GRPCError), reply
    assert reply.status == Status.PERMISSION_DENIED
    assert "node certificate required" in (reply.message or "")
    assert seen.identities == []


def test_client_refuses_server_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with CAStore.init(tmp_path / "other-ca", "other", now) as other:
        pass
    reply, seen = asyncio.run(
        call_status(pki, node_files(pki, "edge-3"), ca_file=other.path / "ca.crt")
    )
    assert isinstance(reply, ssl.SSLCertVerificationError), reply
    assert seen.identities == []


def test_verifier_rejection_is_peer_rejected_error(pki: Pki) -> None:
    # The same reasons as above, straight from the verifier (what central calls).
    files = node_files(pki, "edge-4")
    verifier = Verifier.from_store(pki.store)
    assert verifier.check_peer(files.cert.read_bytes()).node_id == "edge-4"
    with pytest.raises(PeerRejected, match="no client certificate"):
        verifier.check_peer(None)
