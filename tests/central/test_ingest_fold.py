"""The node stream's ingest on SQLite: the ledger is committed (and acked) first and
folded into rollups and totals later (sqlite_fold.py). Whatever reads or writes next
must act as if every acked batch had been folded at its ack."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from edgeward.central.sqlite_core import SqliteCore
from edgeward.central.storage import SqliteStorage
from tests.central.helpers import PROXY_INBOUNDS, delta

ADMIN = "admin:test"


def raw(database: Path, query: str) -> list[tuple]:
    """What the file holds right now, read past the storage (another connection)."""
    conn = sqlite3.connect(database)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def folded_flags(database: Path) -> list[int]:
    return [flag for (flag,) in raw(database, "SELECT folded FROM usage_batches ORDER BY last_seq")]


def user_bytes(database: Path, user_id: str) -> tuple[int, int] | None:
    rows = raw(
        database, f"SELECT uplink_bytes, downlink_bytes FROM users WHERE user_id = '{user_id}'"
    )
    return rows[0] if rows else None


def hourly_bytes(database: Path, user_id: str) -> tuple[int, int]:
    rows = raw(
        database,
        "SELECT coalesce(sum(uplink_bytes), 0), coalesce(sum(downlink_bytes), 0)"
        f" FROM usage_hourly WHERE user_id = '{user_id}'",
    )
    return rows[0]


async def open_with_users(database: Path, **limits: int | None) -> SqliteStorage:
    storage = await SqliteStorage.open(database)
    await storage.add_node("node-a", PROXY_INBOUNDS, actor=ADMIN)
    for user_id, limit in limits.items():
        await storage.create_user(user_id, actor=ADMIN, node_ids=["node-a"], data_limit_bytes=limit)
    return storage


def test_a_deferred_batch_is_acked_unfolded_and_the_next_read_counts_it(tmp_path: Path):
    database = tmp_path / "c.sqlite"

    async def main():
        storage = await open_with_users(database, alice=None)
        result = await storage.ingest("node-a", [delta(1, "alice", 5, 50)], defer=True)
        # Acked with the ledger row committed, not yet in the totals (no await since).
        at_ack = (folded_flags(database), user_bytes(database, "alice"))
        user = await storage.get_user("alice")
        after_read = (folded_flags(database), user_bytes(database, "alice"))
        node = await storage.node_usage("node-a")
        await storage.close()
        return result, at_ack, user, after_read, node

    result, at_ack, user, after_read, node = asyncio.run(main())
    assert (result.acked_seq, result.applied, result.leases) == (1, 1, [])
    assert at_ack == ([0], (0, 0))
    assert (user.uplink_bytes, user.downlink_bytes) == (5, 50)
    assert after_read == ([1], (5, 50))
    assert node == (5, 50)


def test_a_limited_users_batch_folds_at_its_ack_and_is_granted_a_lease(tmp_path: Path):
    database = tmp_path / "c.sqlite"

    async def main():
        storage = await open_with_users(database, bob=1000)
        result = await storage.ingest("node-a", [delta(1, "bob", 100, 0)], defer=True)
        at_ack = (folded_flags(database), user_bytes(database, "bob"))
        await storage.close()
        return result, at_ack

    result, at_ack = asyncio.run(main())
    assert at_ack == ([1], (100, 0))
    assert [(lease.user_id, lease.bytes) for lease in result.leases] == [("bob", 900)]


def test_a_foreign_user_in_a_deferred_batch_is_audited_and_not_counted_when_folded(
    tmp_path: Path,
):
    database = tmp_path / "c.sqlite"

    async def main():
        storage = await open_with_users(database, alice=None)
        result = await storage.ingest(
            "node-a", [delta(1, "alice", 1, 2), delta(2, "mallory", 70, 70)], defer=True
        )
        audit = await storage.audit_log()
        alice = await storage.get_user("alice")
        await storage.close()
        return result, audit, alice

    result, audit, alice = asyncio.run(main())
    assert result.rejected_users == set()  # not known at the ack: the fold audits them
    rejects = [(e.actor, e.action, e.subject) for e in audit if e.action == "reject-usage"]
    assert rejects == [("node:node-a", "reject-usage", "mallory")]
    assert (alice.uplink_bytes, alice.downlink_bytes) == (1, 2)
    assert raw(database, "SELECT rejected_users, folded FROM usage_batches") == [('["mallory"]', 1)]
    assert hourly_bytes(database, "mallory") == (0, 0)


def test_deleting_a_user_right_after_a_deferred_batch_keeps_that_usage(tmp_path: Path):
    database = tmp_path / "c.sqlite"

    async def main():
        storage = await open_with_users(database, alice=None)
        await storage.ingest("node-a", [delta(1, "alice", 30, 40)], defer=True)
        unfolded = folded_flags(database)
        await storage.delete_user("alice", actor=ADMIN, why="test")
        audit = await storage.audit_log()
        node = await storage.node_usage("node-a")
        await storage.close()
        return unfolded, audit, node

    unfolded, audit, node = asyncio.run(main())
    assert unfolded == [0]
    # Folded before the delete: counted as alice's, not rejected as a stranger's.
    assert hourly_bytes(database, "alice") == (30, 40)
    assert node == (30, 40)
    assert [e.action for e in audit if e.subject == "alice"][-1] == "delete-user"
    assert not [e for e in audit if e.action == "reject-usage"]


def test_retention_folds_a_deferred_batch_before_pruning_its_ledger(tmp_path: Path):
    database = tmp_path / "c.sqlite"

    async def main():
        storage = await open_with_users(database, alice=None)
        await storage.ingest("node-a", [delta(1, "alice", 8, 9)], at_ms=1_000, defer=True)
        unfolded = folded_flags(database)
        deleted = await storage.prune_ledger(2_000)
        alice = await storage.get_user("alice")
        replay = await storage.ingest("node-a", [delta(1, "alice", 8, 9)], defer=True)
        again = await storage.get_user("alice")
        await storage.close()
        return unfolded, deleted, alice, replay, again

    unfolded, deleted, alice, replay, again = asyncio.run(main())
    assert unfolded == [0]
    assert deleted == 1
    assert (alice.uplink_bytes, alice.downlink_bytes) == (8, 9)
    assert (replay.acked_seq, replay.applied, replay.duplicates) == (1, 0, 1)
    assert (again.uplink_bytes, again.downlink_bytes) == (8, 9)
    assert folded_flags(database) == []


def test_batches_left_unfolded_by_a_killed_central_are_folded_when_it_opens(tmp_path: Path):
    database = tmp_path / "c.sqlite"

    async def crash():
        storage = await open_with_users(database, alice=None)
        await storage.ingest("node-a", [delta(1, "alice", 3, 4)], defer=True)
        await storage.ingest("node-a", [delta(2, "alice", 5, 6)], defer=True)
        # The fold task never runs and nothing folds at close: what SIGKILL leaves.
        storage._fold_task.cancel()
        await SqliteCore.close(storage)

    asyncio.run(crash())
    left = (folded_flags(database), user_bytes(database, "alice"))

    async def reopen():
        storage = await SqliteStorage.open(database)
        at_open = (folded_flags(database), user_bytes(database, "alice"))
        await storage.close()
        return at_open

    at_open = asyncio.run(reopen())
    assert left == ([0, 0], (0, 0))
    assert at_open == ([1, 1], (8, 10))
    assert hourly_bytes(database, "alice") == (8, 10)


def test_concurrent_deferred_batches_from_two_nodes_with_reads_between_count_exactly(
    tmp_path: Path,
):
    database = tmp_path / "c.sqlite"
    rng = random.Random(5)
    batches = {
        node_id: [
            [delta(seq, rng.choice(("alice", "bob")), rng.randrange(100), rng.randrange(100))
             for seq in range(start, start + 5)]
            for start in range(1, 301, 5)
        ]
        for node_id in ("node-a", "node-b")
    }  # fmt: skip
    expected: dict[str, list[int]] = {"alice": [0, 0], "bob": [0, 0]}
    for node_batches in batches.values():
        for batch in node_batches:
            for row in batch:
                expected[row[1]][0] += row[4]
                expected[row[1]][1] += row[5]

    async def main():
        storage = await SqliteStorage.open(database)
        for node_id in batches:
            await storage.add_node(node_id, PROXY_INBOUNDS, actor=ADMIN)
        for user_id in expected:
            await storage.create_user(user_id, actor=ADMIN, node_ids=list(batches))
        seen_while_streaming = []

        async def stream(node_id: str) -> None:
            for batch in batches[node_id]:
                await storage.ingest(node_id, batch, defer=True)
                if rng.random() < 0.1:
                    await asyncio.sleep(0.06)  # a deferred fold runs meanwhile

        async def read_between() -> None:
            for _ in range(20):
                user = await storage.get_user("alice")
                seen_while_streaming.append(user.uplink_bytes)
                await asyncio.sleep(0.01)

        await asyncio.gather(stream("node-a"), stream("node-b"), read_between())
        users = {u: await storage.get_user(u) for u in expected}
        await storage.close()
        return seen_while_streaming, users

    seen, users = asyncio.run(main())
    assert seen == sorted(seen)  # totals only grow, read by read
    assert {u: [v.uplink_bytes, v.downlink_bytes] for u, v in users.items()} == expected
    assert set(folded_flags(database)) == {1}


def test_a_fold_the_disk_refuses_leaves_the_batch_unfolded_and_is_retried(tmp_path: Path):
    database = tmp_path / "c.sqlite"
    users = {f"user-{i}": None for i in range(500)}

    async def main():
        storage = await open_with_users(database, **users)
        batch = [delta(seq, f"user-{seq - 1}", 1, 2) for seq in range(1, 501)]
        await storage.ingest("node-a", batch, defer=True)
        storage._fold_task.cancel()  # the fold runs below, at the read
        (pages,) = await storage._db.execute_fetchall("PRAGMA page_count")
        await storage._db.execute(f"PRAGMA max_page_count = {pages[0]}")
        try:
            await storage.get_user("user-7")
        except sqlite3.OperationalError as e:
            refused = str(e)
        left = (folded_flags(database), user_bytes(database, "user-7"))
        await storage._db.execute("PRAGMA max_page_count = 1073741823")
        user = await storage.get_user("user-7")
        node = await storage.node_usage("node-a")
        await storage.close()
        return refused, left, user, node

    refused, left, user, node = asyncio.run(main())
    # The read fails with the reason; the batch stays acked and whole in the ledger.
    assert refused == "database or disk is full"
    assert left == ([0], (0, 0))
    assert (user.uplink_bytes, user.downlink_bytes) == (1, 2)
    assert node == (500, 1000)
    assert folded_flags(database) == [1]
