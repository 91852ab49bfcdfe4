"""Consecutive usage batches of a node committed together (Storage.ingest_many, and the
node stream that hands it the batches already waiting): each batch gets its own
result and Ack, replays inside the group add nothing, and a malformed batch is
refused only after the ones before it are committed and acked. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpclib.const import Status

from edgeward.proto.usage_codec import encode_usage
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta, make_pki, node_stream
from tests.central.helpers import running_central as central
from tests.central.test_usage_codec import i64

ADMIN = "admin:test"


async def prepared(storage_backend: StorageBackend):
    storage = await storage_backend.open()
    await storage.add_node("node-a", PROXY_INBOUNDS, actor=ADMIN)
    await storage.create_user("alice", actor=ADMIN, node_ids=["node-a"])
    await storage.create_user("bob", actor=ADMIN, node_ids=["node-a"], data_limit_bytes=1000)
    return storage


def test_one_result_per_batch_replays_inside_the_group_count_once_leases_last(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await prepared(storage_backend)
        first = [delta(1, "alice", 1, 10), delta(2, "alice", 2, 20)]
        overlapping = [delta(2, "alice", 2, 20), delta(3, "bob", 100, 0)]
        later = [delta(5, "alice", 4, 40)]
        results = await storage.ingest_many(
            "node-a", [(first, None), (overlapping, None), (later, None), (first, None)],
            defer=True,
        )  # fmt: skip
        alice, bob = await storage.get_user("alice"), await storage.get_user("bob")
        acked = await storage.acked_seq("node-a")
        await storage.close()
        return results, alice, bob, acked

    results, alice, bob, acked = asyncio.run(main())
    assert [(r.acked_seq, r.applied, r.duplicates) for r in results] == [
        (2, 2, 0), (3, 1, 1), (5, 1, 0), (5, 0, 2),
    ]  # fmt: skip
    # bob (data limit 1000) used 100: one lease for the rest, sent after the Ack of the
    # batch holding that usage or a later one (SQLite: the group's last).
    granted = [(i, lease.user_id, lease.bytes) for i, r in enumerate(results) for lease in r.leases]
    assert [(user, size) for _, user, size in granted] == [("bob", 900)]
    assert granted[0][0] >= 1
    assert (alice.uplink_bytes, alice.downlink_bytes) == (7, 70)
    assert (bob.uplink_bytes, bob.downlink_bytes) == (100, 0)
    assert acked == 5


def test_a_malformed_batch_behind_good_ones_is_refused_after_they_are_acked(
    tmp_path: Path, storage_backend: StorageBackend
):
    async def main():
        pki = make_pki(tmp_path)
        storage = await prepared(storage_backend)
        async with (
            central(pki, storage, storage_backend.location) as port,
            node_stream(port, pki, pki.node("node-a")) as node,
        ):
            await node.handshake("node-a")
            bad = encode_usage([delta(4, "alice", 7, 7), delta(5, "alice", 9, 9)])
            bad.seqs = i64(5, 4)
            # Sent back to back: central finds them waiting together.
            for seq in (1, 2, 3):
                await node.send(usage=encode_usage([delta(seq, "alice", seq, 10 * seq)]))
            await node.send(usage=bad)
            acks = []
            while len(acks) < 3:
                kind, body = await node.recv()
                if kind == "ack":
                    acks.append(body.acked_seq)
            refusal, status = await node.refusal()
        alice = await storage.get_user("alice")
        acked = await storage.acked_seq("node-a")
        await storage.close()
        return acks, refusal, status, alice, acked

    acks, refusal, status, alice, acked = asyncio.run(main())
    assert acks == [1, 2, 3]
    assert status.status == Status.INVALID_ARGUMENT
    assert refusal.message == "usage delta seqs must strictly increase in a batch (4 after 5)"
    assert (alice.uplink_bytes, alice.downlink_bytes) == (6, 60)
    assert acked == 3
