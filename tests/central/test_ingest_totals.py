"""Aggregates kept in the ingest transaction agree with each other and with the ledger,
whatever the mix of replays, overlaps, engines, hours, nodes and foreign users (SQLite file;
test_ingest_backends checks the same on both backends), and enforcement in that transaction."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from edgeward.central import sqlite_ingest
from edgeward.central.ingest import HOUR_MS
from edgeward.central.storage import SqliteStorage
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta

NODES = ("node-a", "node-b")
USERS = ("alice", "bob", "carol", "dave")
SERVES = {"node-a": ("alice", "bob", "carol"), "node-b": ("alice", "dave")}


def node_deltas(rng: random.Random, node_id: str, count: int) -> list[UsageDelta]:
    """count deltas with gaps in seq, both engines, several hours, and a foreign user."""
    rows, seq = [], 0
    users = [*SERVES[node_id], "mallory"]  # mallory: never assigned anywhere
    for _ in range(count):
        seq += rng.choice((1, 1, 1, 2, 5))
        rows.append(
            UsageDelta(
                seq, rng.choice(users), rng.choice((1, 2)), rng.choice(("1", "2")),
                rng.randrange(10_000), rng.randrange(100_000), rng.randrange(5 * HOUR_MS),
            )
        )  # fmt: skip
    return rows


def replayed_batches(rng: random.Random, rows: list[UsageDelta]) -> list[list[UsageDelta]]:
    """Batches covering rows with overlaps, full replays and one late batch."""
    batches = []
    start = 0
    while start < len(rows):
        end = min(len(rows), start + rng.randrange(1, 40))
        batches.append(rows[max(0, start - rng.randrange(0, 10)) : end])  # overlap back
        start = end
    late = batches.pop(len(batches) // 2)
    batches.append(late)  # out of order: after later seqs were acknowledged
    batches.append(rows[: len(rows) // 3])  # a reconnect replaying old, acknowledged seqs
    return batches


def sums(conn: sqlite3.Connection, query: str) -> dict:
    return {row[0]: tuple(row[1:]) for row in conn.execute(query)}


def test_rollups_user_totals_node_totals_and_the_ledger_agree(tmp_path: Path):
    database = tmp_path / "c.sqlite"
    rng = random.Random(6)
    sent = {node: node_deltas(rng, node, 400) for node in NODES}

    async def main():
        storage = await SqliteStorage.open(database)
        for node in NODES:
            await storage.add_node(node, PROXY_INBOUNDS, actor="test")
        for user in USERS:
            nodes = [node for node in NODES if user in SERVES[node]]
            await storage.create_user(user, actor="test", node_ids=nodes)
        queues = {node: replayed_batches(rng, sent[node]) for node in NODES}
        while any(queues.values()):  # nodes interleaved; each node's batches in its order
            node = rng.choice([node for node in NODES if queues[node]])
            await storage.ingest(node, queues[node].pop(0))
        await storage.close()

    asyncio.run(main())
    # What the deltas add up to, computed independently of central.
    expected_user: dict[str, list[int]] = {user: [0, 0] for user in USERS}
    expected_node: dict[str, list[int]] = {}
    for node, rows in sent.items():
        counted = [d for d in rows if d.user_id in SERVES[node]]
        expected_node[node] = [sum(d.uplink for d in counted), sum(d.downlink for d in counted)]
        for d in counted:
            expected_user[d.user_id][0] += d.uplink
            expected_user[d.user_id][1] += d.downlink
    conn = sqlite3.connect(database)
    try:
        rows = sqlite_ingest.ledger_rows(conn)
        ledger_rows = len(rows)
        ledger: dict[str, tuple[int, int]] = {}
        for node, _, _, _, _, up, down, _, counted in rows:
            if counted:
                before = ledger.get(node, (0, 0))
                ledger[node] = (before[0] + up, before[1] + down)
        hourly_by_node = sums(
            conn,
            "SELECT node_id, sum(uplink_bytes), sum(downlink_bytes) FROM usage_hourly"
            " GROUP BY node_id",
        )
        hourly_by_user = sums(
            conn,
            "SELECT user_id, sum(uplink_bytes), sum(downlink_bytes) FROM usage_hourly"
            " GROUP BY user_id",
        )
        nodes = sums(conn, "SELECT node_id, uplink_bytes, downlink_bytes FROM nodes")
        users = sums(conn, "SELECT user_id, uplink_bytes, downlink_bytes FROM users")
        quota = sums(conn, "SELECT user_id, quota_used_bytes FROM users")
        acked = sums(conn, "SELECT node_id, acked_seq FROM nodes")
    finally:
        conn.close()
    assert ledger_rows == sum(len(rows) for rows in sent.values())  # each seq exactly once
    assert acked == {node: (rows[-1].seq,) for node, rows in sent.items()}
    assert nodes == {node: tuple(v) for node, v in expected_node.items()}
    assert ledger == nodes
    assert hourly_by_node == nodes
    assert users == {user: tuple(v) for user, v in expected_user.items()}
    assert hourly_by_user == {user: v for user, v in users.items() if v != (0, 0)}
    assert quota == {user: (up + down,) for user, (up, down) in users.items()}


def test_a_batch_crossing_the_quota_or_after_expiry_suspends_in_the_same_transaction(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await storage_backend.open()
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="test")
        await storage.create_user("alice", actor="test", node_ids=["node-a"], data_limit_bytes=100)
        await storage.create_user(
            "erin", actor="test", node_ids=["node-a"], expires_at_ms=2_000_000_000_000
        )
        await storage.create_user("frank", actor="test", node_ids=["node-a"])
        first = await storage.ingest("node-a", [delta(1, "alice", 30, 30)], at_ms=1_000)
        # Several deltas of alice in one batch: 60 + 20 + 20 reaches the limit of 100.
        crossing = [delta(2, "alice", 10, 10), delta(3, "frank", 5, 5), delta(4, "alice", 10, 10)]
        second = await storage.ingest("node-a", crossing, at_ms=2_000)
        late = await storage.ingest("node-a", [delta(5, "erin", 1, 1)], at_ms=2_000_000_000_001)
        users = {u: await storage.get_user(u) for u in ("alice", "erin", "frank")}
        audit = [(e.action, e.subject, e.reason) for e in await storage.audit_log()]
        await storage.close()
        return first, second, late, users, audit

    first, second, late, users, audit = asyncio.run(main())
    assert first.leases[0].user_id == "alice" and first.leases[0].bytes == 40
    assert users["alice"].enforced_reason == v1.Reason.QUOTA
    assert users["alice"].quota_used_bytes == 100
    assert second.leases == []  # nothing left to lease
    assert users["erin"].enforced_reason == v1.Reason.EXPIRED
    assert late.applied == 1
    assert users["frank"].enforced_reason == v1.Reason.UNSPECIFIED
    assert ("suspend", "alice", "quota exhausted: used 100 of 100 bytes") in audit
    assert ("suspend", "erin", "expired at 2000000000000 ms") in audit
