"""Exactly-once ingest on a real SQLite file: replays, overlaps, reordering, aggregates."""

from __future__ import annotations

import asyncio
import random

import pytest

from edgeward.central.ingest import (
    HOUR_MS,
    InvalidBatch,
    aggregate,
    aggregate_batches,
    check_batch,
)
from edgeward.central.storage import Storage
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, decode_columns, encode_usage
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta


async def fleet(backend: StorageBackend) -> Storage:
    storage = await backend.open()
    for node in ("node-a", "node-b"):
        await storage.add_node(node, PROXY_INBOUNDS, actor="test")
    await storage.create_user("alice", actor="test", node_ids=["node-a", "node-b"])
    await storage.create_user("bob", actor="test", node_ids=["node-b"])
    return storage


def batch(seqs, user="alice", up=10, down=100):
    return [delta(seq, user, up, down) for seq in seqs]


def test_the_same_batch_twice_counts_once(storage_backend: StorageBackend):
    async def main():
        storage = await fleet(storage_backend)
        first = await storage.ingest("node-a", batch(range(1, 6)))
        second = await storage.ingest("node-a", batch(range(1, 6)))
        user = await storage.get_user("alice")
        await storage.close()
        return first, second, user

    first, second, user = asyncio.run(main())
    assert (first.acked_seq, first.applied, first.duplicates) == (5, 5, 0)
    assert (second.acked_seq, second.applied, second.duplicates) == (5, 0, 5)
    assert (user.uplink_bytes, user.downlink_bytes) == (50, 500)


def test_overlapping_and_out_of_order_batches_count_each_seq_once(storage_backend: StorageBackend):
    async def main():
        storage = await fleet(storage_backend)
        acks = [
            (await storage.ingest("node-a", batch(range(1, 11)))).acked_seq,
            (await storage.ingest("node-a", batch(range(6, 16)))).acked_seq,  # overlap 6-10
            (await storage.ingest("node-a", batch(range(30, 35)))).acked_seq,  # gap
            (await storage.ingest("node-a", batch(range(16, 30)))).acked_seq,  # the gap, late
            (await storage.ingest("node-a", batch(range(1, 35)))).acked_seq,  # full replay
        ]
        # Another node's seqs are its own: node-b seq 1 is a different delta.
        await storage.ingest("node-b", batch(range(1, 3)))
        user = await storage.get_user("alice")
        node_a = await storage.node_usage("node-a")
        node_b = await storage.node_usage("node-b")
        await storage.close()
        return acks, user, node_a, node_b

    acks, user, node_a, node_b = asyncio.run(main())
    assert acks == [10, 15, 34, 34, 34]
    assert (user.uplink_bytes, user.downlink_bytes) == (36 * 10, 36 * 100)
    assert node_a == (34 * 10, 34 * 100)
    assert node_b == (20, 200)


def test_usage_rolls_up_per_user_node_engine_hour(storage_backend: StorageBackend):
    async def main():
        storage = await fleet(storage_backend)
        deltas = [
            delta(1, "alice", 1, 2, at_ms=5 * HOUR_MS + 10),
            delta(2, "alice", 3, 4, at_ms=5 * HOUR_MS + 20),
            delta(3, "alice", 5, 6, at_ms=6 * HOUR_MS),
            UsageDelta(4, "alice", int(v1.Engine.WIREGUARD), "e1", 7, 8, 6 * HOUR_MS + 1),
        ]
        await storage.ingest("node-a", deltas)
        await storage.ingest("node-b", [delta(1, "alice", 100, 100, at_ms=5 * HOUR_MS)])
        rows = await storage.hourly_usage("alice")
        await storage.close()
        return rows

    assert asyncio.run(main()) == [
        ("node-a", int(v1.Engine.PROXY), 5 * HOUR_MS, 4, 6),
        ("node-a", int(v1.Engine.PROXY), 6 * HOUR_MS, 5, 6),
        ("node-a", int(v1.Engine.WIREGUARD), 6 * HOUR_MS, 7, 8),
        ("node-b", int(v1.Engine.PROXY), 5 * HOUR_MS, 100, 100),
    ]


def test_a_node_cannot_charge_users_it_never_served_but_removed_users_still_count(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await fleet(storage_backend)
        await storage.assign("bob", "node-a", actor="test")
        await storage.unassign("bob", "node-a", actor="test", why="moved")
        result = await storage.ingest(
            "node-a", [delta(1, "bob", 5, 5), delta(2, "carol", 9, 9), delta(3, "alice", 1, 1)]
        )
        # dave is a user of node-b only; node-a never served him.
        await storage.create_user("dave", actor="test", node_ids=["node-b"])
        foreign = await storage.ingest("node-a", [delta(4, "dave", 1000, 1000)])
        users = {u: await storage.get_user(u) for u in ("alice", "bob", "dave")}
        audit = await storage.audit_log()
        node_a = await storage.node_usage("node-a")
        await storage.close()
        return result, foreign, users, audit, node_a

    result, foreign, users, audit, node_a = asyncio.run(main())
    # bob was assigned to node-a once: his traffic happened, so it counts.
    assert users["bob"].uplink_bytes == 5
    assert users["alice"].uplink_bytes == 1
    # dave never was: the deltas are acknowledged (ledgered) but charge nothing.
    assert foreign.acked_seq == 4 and foreign.rejected_users == {"dave"}
    assert users["dave"].uplink_bytes == 0 and users["dave"].quota_used_bytes == 0
    assert result.rejected_users == {"carol"}
    assert node_a == (6, 6)
    rejected = [(e.actor, e.action, e.subject) for e in audit if e.action == "reject-usage"]
    assert rejected == [
        ("node:node-a", "reject-usage", "carol"),
        ("node:node-a", "reject-usage", "dave"),
    ]


def test_a_batch_breaking_the_protocol_is_refused_and_changes_nothing(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await fleet(storage_backend)
        await storage.ingest("node-a", batch([1, 2]))
        before = await storage_backend.dump()
        errors = []
        for bad in (batch([3, 3]), batch([5, 4]), batch([0, 1])):
            with pytest.raises(InvalidBatch) as caught:
                await storage.ingest("node-a", bad)
            errors.append(str(caught.value))
        with pytest.raises(LookupError, match="unknown node 'node-x'"):
            await storage.ingest("node-x", batch([1]))
        after = await storage_backend.dump()
        await storage.close()
        return before, after, errors

    before, after, errors = asyncio.run(main())
    assert errors == [
        "usage delta seqs must strictly increase in a batch (3 after 3)",
        "usage delta seqs must strictly increase in a batch (4 after 5)",
        "usage delta seq must be >= 1",
    ]
    assert before == after


def test_aggregate_is_pure_and_sums_per_user():
    deltas = [delta(1, "a", 1, 2), delta(2, "b", 3, 4), delta(3, "a", 5, 6), delta(4, "x", 7, 7)]
    check_batch(deltas)
    agg = aggregate("n", deltas, {"a", "b"})
    assert agg.per_user == {"a": [6, 8], "b": [3, 4]}
    assert (agg.node_uplink, agg.node_downlink) == (9, 12)
    assert agg.rejected_users == {"x"}
    assert [row[-1] for row in agg.ledger] == [1, 1, 1, 0]


def test_aggregate_batches_of_columns_and_rows_sums_like_one_batch():
    rng = random.Random(3)
    rows = [
        UsageDelta(
            seq, rng.choice("abx"), rng.choice((1, 2)), "e", rng.randrange(100),
            rng.randrange(100), rng.randrange(3 * HOUR_MS),
        )
        for seq in range(1, 301)
    ]  # fmt: skip
    as_columns = decode_columns(encode_usage(rows[:120]))
    check_batch(as_columns)
    together = aggregate("n", rows, {"a", "b"}, ledger=False)
    split = aggregate_batches([as_columns, rows[120:]], {"a", "b"})
    assert split.hourly == together.hourly and len(together.hourly) > 6
    assert split.per_user == together.per_user
    assert (split.node_uplink, split.node_downlink) == (
        together.node_uplink, together.node_downlink,
    )  # fmt: skip
    assert split.rejected_users == together.rejected_users == {"x"}
    # The sums agree with the rows summed by hand.
    assert split.per_user["a"] == [
        sum(r.uplink for r in rows if r.user_id == "a"),
        sum(r.downlink for r in rows if r.user_id == "a"),
    ]


def test_check_batch_reads_the_seqs_of_columns():
    bad = encode_usage([delta(1, "a"), delta(2, "a")])
    columns = decode_columns(bad)
    columns.seqs[1] = 1  # as if decoded without its checks
    with pytest.raises(InvalidBatch, match=r"strictly increase in a batch \(1 after 1\)"):
        check_batch(columns)
