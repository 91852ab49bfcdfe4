"""The node stream over real mTLS against central serving a real SQLite file and a real
PostgreSQL database (storage_backend)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpclib.const
import pytest
from grpclib.client import Channel
from grpclib.const import Status

from edgeward.pki import authority
from edgeward.pki.certs import generate_key, key_pem, make_csr
from edgeward.pki.tls import client_context
from edgeward.proto import v1
from tests.central.backends import StorageBackend
from tests.central.helpers import (
    ENROLL,
    PROXY_INBOUNDS,
    WAIT,
    Pair,
    delta,
    make_pki,
    node_stream,
    running_central,
)


async def setup(tmp_path: Path, backend: StorageBackend):
    pki = make_pki(tmp_path)
    database = backend.location
    storage = await backend.open()
    for node in ("node-a", "node-b"):
        await storage.add_node(node, PROXY_INBOUNDS, actor="admin:root")
    await storage.create_user(
        "alice", actor="admin:root", data_limit_bytes=3000, node_ids=["node-a", "node-b"]
    )
    await storage.create_user("bob", actor="admin:root", node_ids=["node-b"])
    return pki, database, storage


def test_hello_welcome_snapshot_leases_acks_and_pushed_changes(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        node_a = pki.node("node-a")
        async with running_central(pki, storage, database) as port:
            async with node_stream(port, pki, node_a) as node:
                welcome, snapshot = await node.handshake("node-a")
                leases = await node.expect("leases")
                acked = await node.usage([delta(1, "alice", 100, 0), delta(2, "alice", 0, 50)])
                replay = await node.usage([delta(1, "alice", 100, 0), delta(2, "alice", 0, 50)])
                await node.send(heartbeat=v1.Heartbeat(sent_at_ms=1))
                heartbeat = await node.expect("heartbeat")
                # An admin change reaches the connected node as a change on top of its revision.
                await storage.create_user("carol", actor="admin:root", node_ids=["node-a"])
                change = await node.expect("change")
                await storage.set_suspended("alice", True, actor="admin:root", why="abuse")
                enforcement = await node.expect("enforcement")
                suspension = await node.expect("change")
            async with node_stream(port, pki, node_a) as node:
                welcome_again, _ = await node.handshake()
        user = await storage.get_user("alice")
        await storage.close()
        return (welcome, snapshot, leases, acked, replay, heartbeat, change, enforcement,
                suspension, welcome_again, user)  # fmt: skip

    (welcome, snapshot, leases, acked, replay, heartbeat, change, enforcement, suspension,
     welcome_again, user) = asyncio.run(main())  # fmt: skip
    assert (welcome.node_id, welcome.acked_seq) == ("node-a", 0)
    assert [u.user_id for u in snapshot.users] == ["alice"]
    assert [(lease.user_id, lease.bytes) for lease in leases.leases] == [("alice", 1500)]
    assert (acked, replay) == (2, 2)
    assert heartbeat.sent_at_ms > 1
    assert (user.uplink_bytes, user.downlink_bytes) == (100, 50)
    assert change.base_revision == snapshot.revision
    assert [u.user_id for u in change.upserts] == ["carol"]
    assert enforcement.commands == [v1.Command("alice", v1.Action.SUSPEND, v1.Reason.ADMIN)]
    assert suspension.base_revision == change.revision
    assert suspension.upserts[0].suspended
    assert suspension.upserts[0].suspended_reason == v1.Reason.ADMIN
    assert welcome_again.acked_seq == 2


def test_quota_exhaustion_is_pushed_to_every_node_serving_the_user(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        async with (
            running_central(pki, storage, database) as port,
            node_stream(port, pki, pki.node("node-a")) as node_a,
            node_stream(port, pki, pki.node("node-b")) as node_b,
        ):
            await node_a.handshake()
            await node_a.expect("leases")
            await node_b.handshake()
            await node_b.expect("leases")
            await node_b.usage([delta(1, "alice", 3000, 0)])
            pushed = []
            for node in (node_a, node_b):
                kinds = {}
                while "enforcement" not in kinds or "change" not in kinds:
                    kind, body = await node.recv()
                    kinds[kind] = body
                pushed.append(kinds)
        await storage.close()
        return pushed

    for kinds in asyncio.run(main()):
        assert kinds["enforcement"].commands == [
            v1.Command("alice", v1.Action.SUSPEND, v1.Reason.QUOTA)
        ]
        alice = next(u for u in kinds["change"].upserts if u.user_id == "alice")
        assert alice.suspended and alice.suspended_reason == v1.Reason.QUOTA


def test_node_a_cannot_report_for_or_receive_node_b_users(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        node_a = pki.node("node-a")
        async with running_central(pki, storage, database) as port:
            async with node_stream(port, pki, node_a) as node:
                await node.hello("node-b")  # claims to be node-b in the message
                claimed = await node.refusal()
            async with node_stream(port, pki, node_a) as node:
                _, snapshot = await node.handshake("node-a")
                await node.expect("leases")
                acked = await node.usage([delta(1, "bob", 10**9, 10**9)])
                # A change of node-b's user is not sent to node-a; node-a's next
                # message is about its own user.
                await storage.set_suspended("bob", True, actor="admin:root", why="test")
                await storage.set_suspended("alice", True, actor="admin:root", why="test")
                first = await node.expect("enforcement")
        bob = await storage.get_user("bob")
        audit = [(e.actor, e.action, e.subject) for e in await storage.audit_log()]
        await storage.close()
        return claimed, snapshot, acked, first, bob, audit

    claimed, snapshot, acked, first, bob, audit = asyncio.run(main())
    stream_error, status = claimed
    assert status.status == Status.PERMISSION_DENIED
    assert status.message == "hello names node 'node-b' but the certificate is node 'node-a'"
    assert (stream_error.code, stream_error.message) == ("permission_denied", status.message)
    assert [u.user_id for u in snapshot.users] == ["alice"]
    assert acked == 1  # acknowledged so the node does not resend forever...
    assert (bob.uplink_bytes, bob.downlink_bytes, bob.quota_used_bytes) == (
        0,
        0,
        0,
    )  # ...not counted
    assert ("node:node-a", "reject-usage", "bob") in audit
    assert [c.user_id for c in first.commands] == ["alice"]


@pytest.mark.parametrize("case", ["revoked", "unregistered", "no-cert", "admin-cert"])
def test_nodes_that_may_not_connect_are_refused_with_the_reason(
    tmp_path: Path, storage_backend: StorageBackend, case: str
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        if case == "revoked":
            client = pki.node("node-a")
            pki.revoke("node-a")
        elif case == "unregistered":
            client = pki.node("node-z")
        elif case == "admin-cert":
            issued = authority.issue_admin(pki.store, "root", "admin", datetime.now(UTC))
            client = Pair(tmp_path / "admin.crt", tmp_path / "admin.key")
            client.cert.write_bytes(issued.cert_pem)
            client.key.write_bytes(issued.key_pem)
        else:
            client = None
        async with (
            running_central(pki, storage, database) as port,
            node_stream(port, pki, client) as node,
        ):
            await node.hello()
            stream_error, refused = await node.refusal()
        await storage.close()
        return stream_error, refused

    stream_error, refused = asyncio.run(main())
    expected = {
        "revoked": (Status.UNAUTHENTICATED, "is revoked"),
        "unregistered": (Status.PERMISSION_DENIED, "node 'node-z' is not registered"),
        "no-cert": (Status.UNAUTHENTICATED, "no client certificate"),
        "admin-cert": (Status.UNAUTHENTICATED, "node certificate required"),
    }[case]
    assert refused.status == expected[0]
    assert expected[1] in refused.message
    assert stream_error.message == refused.message


def test_enrollment_without_a_certificate_then_streaming_with_the_issued_one(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        token = authority.mint_enrollment_token(pki.store, "node-b", datetime.now(UTC))
        key = generate_key()
        async with running_central(pki, storage, database) as port:
            channel = Channel("127.0.0.1", port, ssl=client_context(pki.ca_file))
            try:
                response = await channel.request(
                    ENROLL, grpclib.const.Cardinality.UNARY_UNARY, v1.EnrollRequest,
                    v1.EnrollResponse, timeout=WAIT,
                ).__aenter__()  # fmt: skip
                await response.send_message(
                    v1.EnrollRequest(
                        node_id="node-b", token=token, csr_pem=make_csr(key, "node-b")
                    ),
                    end=True,
                )
                enrolled = await response.recv_message()
                await response.__aexit__(None, None, None)
            finally:
                channel.close()
            pair = Pair(tmp_path / "enrolled.crt", tmp_path / "enrolled.key")
            pair.cert.write_bytes(enrolled.certificate_pem)
            pair.key.write_bytes(key_pem(key))
            async with node_stream(port, pki, pair) as node:
                welcome, snapshot = await node.handshake("node-b")
        await storage.close()
        return enrolled, welcome, snapshot

    enrolled, welcome, snapshot = asyncio.run(main())
    assert enrolled.ca_pem == (tmp_path / "ca" / "ca.crt").read_bytes()
    assert welcome.node_id == "node-b"
    assert [u.user_id for u in snapshot.users] == ["alice", "bob"]


def test_shutdown_ends_streams_with_a_reason_and_serve_returns(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki, database, storage = await setup(tmp_path, storage_backend)
        async with running_central(pki, storage, database) as port:
            node_ctx = node_stream(port, pki, pki.node("node-b"))
            node = await node_ctx.__aenter__()
            await node.handshake()
            await node.expect("leases")
        # running_central's exit set the shutdown event and awaited serve().
        kind, body = await node.recv()
        ended = await asyncio.wait_for(node.stream.recv_message(), WAIT)
        await node_ctx.__aexit__(None, None, None)
        await storage.close()
        return kind, body, ended

    kind, body, ended = asyncio.run(main())
    assert (kind, body.code) == ("error", "shutting-down")
    assert ended is None
