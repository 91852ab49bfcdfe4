"""Enrollment and renewal end to end on loopback: a node without a certificate enrolls
over server-authenticated TLS (grpclib, the real Enroll RPC), then uses the certificate
it got for a mutual-TLS call that the server attributes to its node id; a node renews
over its mTLS stream, authorised by the certificate it connected with."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import betterproto2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward.pki import authority, certs
from edgeward.pki.errors import PkiError
from edgeward.pki.grpc_auth import current_peer_cert, install_peer_check, pki_error_status
from edgeward.pki.store import CAStore
from edgeward.pki.tls import client_context, server_context
from edgeward.pki.verify import Verifier
from edgeward.proto import v1
from tests.pki.servers import Pki, Seen, StatusService, connections_drained, node_files

ENROLL = "/edgeward.v1.NodeService/Enroll"


class EnrollService(v1.NodeServiceBase):
    def __init__(self, store: CAStore) -> None:
        self.store = store

    async def enroll(self, message: v1.EnrollRequest) -> v1.EnrollResponse:
        try:
            cert_pem = authority.enroll(
                self.store, message.node_id, message.token, message.csr_pem, datetime.now(UTC)
            )
        except PkiError as e:
            raise pki_error_status(e) from None
        return v1.EnrollResponse(certificate_pem=cert_pem, ca_pem=self.store.ca_pem)


@contextlib.asynccontextmanager
async def central(pki: Pki) -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()
    server = Server([EnrollService(pki.store), StatusService(seen)])
    install_peer_check(server, Verifier.from_store(pki.store), "node", open_methods={ENROLL})
    ctx = server_context(pki.server.cert, pki.server.key, pki.ca_file, require_client_cert=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await server.start(sock=sock, ssl=ctx)
    port = sock.getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()
        await connections_drained(port)


def test_node_enrolls_without_a_cert_then_connects_with_mtls(pki: Pki, tmp_path: Path) -> None:
    token = authority.mint_enrollment_token(pki.store, "edge-1", datetime.now(UTC))
    key = certs.generate_key()
    request = v1.EnrollRequest(node_id="edge-1", token=token, csr_pem=certs.make_csr(key, "edge-1"))
    node_dir = tmp_path / "node"
    node_dir.mkdir()

    async def run() -> dict[str, object]:
        out: dict[str, object] = {}
        async with central(pki) as (port, seen):
            anonymous = Channel("127.0.0.1", port, ssl=client_context(pki.ca_file))
            try:
                reply = await v1.NodeServiceStub(anonymous).enroll(request, timeout=10)
                try:
                    await v1.NodeServiceStub(anonymous).enroll(request, timeout=10)
                except GRPCError as e:
                    out["reuse"] = e
                try:
                    await v1.AdminServiceStub(anonymous).get_status(timeout=10)
                except GRPCError as e:
                    out["anonymous_status"] = e
            finally:
                anonymous.close()
            # The node keeps its own key; only the certificate came over the wire.
            (node_dir / "node.key").write_bytes(certs.key_pem(key))
            (node_dir / "node.crt").write_bytes(reply.certificate_pem)
            (node_dir / "ca.crt").write_bytes(reply.ca_pem)
            ctx = client_context(node_dir / "ca.crt", node_dir / "node.crt", node_dir / "node.key")
            enrolled = Channel("127.0.0.1", port, ssl=ctx)
            try:
                out["status"] = await v1.AdminServiceStub(enrolled).get_status(timeout=10)
            finally:
                enrolled.close()
            out["seen"] = [(i.kind, i.node_id) for i in seen.identities]
        return out

    out = asyncio.run(run())
    assert isinstance(out["status"], v1.GetStatusResponse)
    assert out["seen"] == [("node", "edge-1")]
    reuse = out["reuse"]
    assert isinstance(reuse, GRPCError) and reuse.status == Status.PERMISSION_DENIED
    assert "already used" in (reuse.message or "")
    anonymous_status = out["anonymous_status"]
    assert isinstance(anonymous_status, GRPCError)
    assert anonymous_status.status == Status.UNAUTHENTICATED
    assert "no client certificate" in (anonymous_status.message or "")
    assert [r.via for r in pki.store.issued(kind="node")] == ["enroll"]


def test_enroll_with_bad_csr_is_invalid_argument_and_issues_nothing(pki: Pki) -> None:
    token = authority.mint_enrollment_token(pki.store, "edge-2", datetime.now(UTC))
    request = v1.EnrollRequest(node_id="edge-2", token=token, csr_pem=b"not a csr")

    async def run() -> GRPCError:
        async with central(pki) as (port, _seen):
            channel = Channel("127.0.0.1", port, ssl=client_context(pki.ca_file))
            try:
                await v1.NodeServiceStub(channel).enroll(request, timeout=10)
            except GRPCError as e:
                return e
            finally:
                channel.close()
        raise AssertionError("enrollment with a bad CSR succeeded")

    error = asyncio.run(run())
    assert error.status == Status.INVALID_ARGUMENT
    assert "malformed CSR" in (error.message or "")
    assert pki.store.issued(kind="node") == []
    assert pki.store.tokens()[0].used_at is None


class RenewingNodeService(EnrollService):
    """The renewal half of central's node stream: RenewRequest in, RenewResponse out,
    authorised by the certificate the stream was opened with."""

    async def stream(self, messages: AsyncIterator[v1.NodeMessage]):
        async for message in messages:
            kind, value = betterproto2.which_one_of(message, "kind")
            if kind != "renew":
                continue
            try:
                cert_pem = authority.renew(
                    self.store, current_peer_cert.get(), value.csr_pem, datetime.now(UTC)
                )
            except PkiError as e:
                yield v1.CentralMessage(error=v1.StreamError(code="renew", message=str(e)))
                continue
            yield v1.CentralMessage(
                renewed=v1.RenewResponse(certificate_pem=cert_pem, chain_pem=self.store.ca_pem)
            )


def test_node_renews_over_its_mtls_stream_and_uses_the_new_cert(pki: Pki, tmp_path: Path) -> None:
    current = node_files(pki, "edge-3")
    new_key = certs.generate_key()
    renew = v1.NodeMessage(renew=v1.RenewRequest(csr_pem=certs.make_csr(new_key, "edge-3")))
    bad = v1.NodeMessage(renew=v1.RenewRequest(csr_pem=certs.make_csr(new_key, "edge-4")))

    async def run() -> tuple[list[v1.CentralMessage], v1.GetStatusResponse, list]:
        seen = Seen()
        server = Server([RenewingNodeService(pki.store), StatusService(seen)])
        install_peer_check(server, Verifier.from_store(pki.store), "node")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await server.start(
            sock=sock, ssl=server_context(pki.server.cert, pki.server.key, pki.ca_file)
        )
        port = sock.getsockname()[1]
        try:
            ctx = client_context(pki.ca_file, current.cert, current.key)
            channel = Channel("127.0.0.1", port, ssl=ctx)
            try:
                replies = [m async for m in v1.NodeServiceStub(channel).stream([bad, renew])]
            finally:
                channel.close()
            renewed = betterproto2.which_one_of(replies[-1], "kind")[1]
            (tmp_path / "new.crt").write_bytes(renewed.certificate_pem)
            (tmp_path / "new.key").write_bytes(certs.key_pem(new_key))
            ctx = client_context(pki.ca_file, tmp_path / "new.crt", tmp_path / "new.key")
            channel = Channel("127.0.0.1", port, ssl=ctx)
            try:
                status = await v1.AdminServiceStub(channel).get_status(timeout=10)
            finally:
                channel.close()
        finally:
            server.close()
            await server.wait_closed()
            await connections_drained(port)
        return replies, status, seen.identities

    replies, status, identities = asyncio.run(run())
    kinds = [betterproto2.which_one_of(m, "kind")[0] for m in replies]
    assert kinds == ["error", "renewed"]
    assert "CSR names node 'edge-4'" in replies[0].error.message
    new_cert = certs.load_cert(replies[1].renewed.certificate_pem)
    assert new_cert.public_key() == new_key.public_key()
    assert certs.identity_of(new_cert).node_id == "edge-3"
    assert status.nodes_total == 1
    assert identities[-1].serial == new_cert.serial_number
    old_serial = certs.format_serial(certs.load_cert(current.cert.read_bytes()).serial_number)
    assert pki.store.issued(kind="node")[-1].via == f"renew:{old_serial}"
