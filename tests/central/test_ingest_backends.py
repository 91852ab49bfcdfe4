"""apply_usage on both backends (real SQLite file, real PostgreSQL cluster): the same batches
give the same ledger, rollups and totals, each seq counted once; on PostgreSQL two replicas
applying the same batch at once count it once."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from itertools import pairwise
from pathlib import Path

import asyncpg
import pytest

from edgeward.central import pg_ingest, pg_schema, schema, sqlite_ingest
from edgeward.central.ingest import HOUR_MS
from edgeward.proto.usage_codec import UsageDelta

SERVES = {"node-a": ("alice", "bob", "carol"), "node-b": ("alice", "dave")}
USERS = ("alice", "bob", "carol", "dave")
LIMITED = {"alice": 10**9}  # alice has a data limit and a lease on node-a
SETUP = [
    *[f"INSERT INTO nodes (node_id, created_at_ms) VALUES ('{n}', 0)" for n in SERVES],
    *[
        f"INSERT INTO users (user_id, created_at_ms, data_limit_bytes)"
        f" VALUES ('{u}', 0, {LIMITED.get(u, 'NULL')})"
        for u in USERS
    ],
    *[
        f"INSERT INTO assignments (user_id, node_id, assigned_at_ms) VALUES ('{u}', '{n}', 0)"
        for n, users in SERVES.items()
        for u in users
    ],
    "UPDATE assignments SET removed_at_ms = 5 WHERE user_id = 'carol'",  # removed: still counts
    "INSERT INTO leases (user_id, node_id, lease_id, granted_bytes, granted_at_ms)"
    " VALUES ('alice', 'node-a', 1, 1000000, 0)",
]
DUMP = {
    "ledger": "SELECT node_id, seq, user_id, engine, epoch, uplink_bytes, downlink_bytes,"
    " sampled_at_ms, counted FROM deltas ORDER BY node_id, seq",
    "hourly": "SELECT * FROM usage_hourly ORDER BY user_id, node_id, engine, hour_ms",
    "users": "SELECT user_id, uplink_bytes, downlink_bytes, quota_used_bytes FROM users"
    " ORDER BY user_id",
    "nodes": "SELECT node_id, acked_seq, uplink_bytes, downlink_bytes FROM nodes ORDER BY node_id",
    "leases": "SELECT user_id, node_id, used_bytes FROM leases ORDER BY user_id, node_id",
}


def workload(seed: int) -> list[tuple[str, list[UsageDelta]]]:
    """Interleaved batches of two nodes with overlaps, a late batch and a replay."""
    rng = random.Random(seed)
    batches = {}
    for node, users in SERVES.items():
        rows, seq = [], 0
        for _ in range(300):
            seq += rng.choice((1, 1, 2, 7))
            rows.append(
                UsageDelta(
                    seq, rng.choice([*users, "mallory"]), rng.choice((1, 2)), "1",
                    rng.randrange(10_000), rng.randrange(100_000), rng.randrange(3 * HOUR_MS),
                )
            )  # fmt: skip
        cuts = [0, *sorted(rng.sample(range(1, len(rows)), 12)), len(rows)]
        # each batch reaches up to 3 rows back into the previous one (overlap)
        chunks = [rows[max(0, a - 3) : b] for a, b in pairwise(cuts)]
        late = chunks.pop(4)  # sent after later seqs were acknowledged
        batches[node] = [*chunks, late, rows[:100]]  # and a reconnect replaying old seqs
    merged, queues = [], {node: list(batches[node]) for node in SERVES}
    while any(queues.values()):  # nodes interleaved, each node's batches in its order
        node = rng.choice([n for n in SERVES if queues[n]])
        merged.append((node, queues[node].pop(0)))
    return merged


def expected(work: list[tuple[str, list[UsageDelta]]]) -> dict[str, dict]:
    unique = {(node, d.seq): (node, d) for node, batch in work for d in batch}
    users = {u: [0, 0] for u in USERS}
    nodes = {n: [0, 0] for n in SERVES}
    for node, d in unique.values():
        if d.user_id in SERVES[node] or (d.user_id == "carol" and node == "node-a"):
            users[d.user_id][0] += d.uplink
            users[d.user_id][1] += d.downlink
            nodes[node][0] += d.uplink
            nodes[node][1] += d.downlink
    return {"users": users, "nodes": nodes, "ledger_rows": len(unique)}


async def run_sqlite(path: Path, work) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        schema.migrate(conn)
        for statement in SETUP:
            conn.execute(statement)
        for node, batch in work:
            conn.execute("BEGIN IMMEDIATE")
            sqlite_ingest.apply_usage(conn, node, batch, 1)
            conn.execute("COMMIT")
        tables = {name: [tuple(r) for r in conn.execute(q)] for name, q in DUMP.items()}
        tables["ledger"] = sqlite_ingest.ledger_rows(conn)  # stored as batches
        return tables
    finally:
        conn.close()


async def run_postgresql(dsn: str, work) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(dsn)
    try:
        await pg_schema.migrate(conn)
        for statement in SETUP:
            await conn.execute(statement)
        for node, batch in work:
            async with conn.transaction():
                await pg_ingest.apply_usage(conn, node, batch, 1)
        return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in DUMP.items()}
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path: Path):
    if request.param == "sqlite":
        return lambda work: run_sqlite(tmp_path / "c.sqlite", work)
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda work: run_postgresql(dsn, work)


def test_replays_overlaps_and_late_batches_count_each_seq_once_on_both_backends(backend):
    work = workload(10)
    tables = asyncio.run(backend(work))
    want = expected(work)
    assert len(tables["ledger"]) == want["ledger_rows"]
    assert {u: [up, down] for u, up, down, _ in tables["users"]} == want["users"]
    assert {n: [up, down] for n, _, up, down in tables["nodes"]} == want["nodes"]
    # quota use, rollups and the ledger's counted rows all equal the totals.
    assert all(quota == up + down for _, up, down, quota in tables["users"])
    hourly_by_user = {u: [0, 0] for u in USERS}
    for user, _, _, _, up, down in tables["hourly"]:
        hourly_by_user[user][0] += up
        hourly_by_user[user][1] += down
    assert hourly_by_user == want["users"]
    counted = {n: [0, 0] for n in SERVES}
    for node, _, _, _, _, up, down, _, is_counted in tables["ledger"]:
        if is_counted:
            counted[node][0] += up
            counted[node][1] += down
    assert counted == want["nodes"]
    assert tables["leases"] == [("alice", "node-a", sum(want_alice_on_a(work)))]


def want_alice_on_a(work) -> list[int]:
    unique = {d.seq: d for node, batch in work if node == "node-a" for d in batch}
    return [d.uplink + d.downlink for d in unique.values() if d.user_id == "alice"]


def test_both_backends_write_identical_tables(tmp_path: Path, postgres_dsn: str):
    work = workload(11)
    on_sqlite = asyncio.run(run_sqlite(tmp_path / "c.sqlite", work))
    on_postgresql = asyncio.run(run_postgresql(postgres_dsn, work))
    assert on_sqlite == on_postgresql


def test_two_replicas_applying_the_same_batch_at_once_count_it_once(postgres_dsn: str):
    """A node reconnected to replica 2 while replica 1 still commits its batch."""
    batch = [UsageDelta(seq, "alice", 1, "1", 10, 100, 0) for seq in range(1, 201)]

    async def main():
        setup = await asyncpg.connect(postgres_dsn)
        await pg_schema.migrate(setup)
        for statement in SETUP:
            await setup.execute(statement)
        replicas = [await asyncpg.connect(postgres_dsn) for _ in range(2)]
        gate = asyncio.Event()

        async def apply(conn):
            async with conn.transaction():
                await gate.wait()
                return await pg_ingest.apply_usage(conn, "node-a", batch, 1)

        tasks = [asyncio.create_task(apply(conn)) for conn in replicas]
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        user = await setup.fetchrow(
            "SELECT uplink_bytes, downlink_bytes FROM users WHERE user_id = 'alice'"
        )
        rows = await setup.fetchval("SELECT count(*) FROM deltas")
        for conn in [setup, *replicas]:
            await conn.close()
        return results, tuple(user), rows

    results, user, rows = asyncio.run(main())
    assert sorted(r.fresh for r in results) == [0, 200]
    assert [r.acked_seq for r in results] == [200, 200]
    assert user == (2000, 20000)
    assert rows == 200


def test_a_replica_decides_on_quota_use_that_includes_another_replicas_commit(postgres_dsn: str):
    """alice (limit 10**9) on two nodes; each node's batch is applied on its own replica.
    The second replica read alice before the first committed: its decision must still see
    both batches, or two half-quota batches would cross the limit unnoticed."""
    half = 10**9 // 2

    async def main():
        setup = await asyncpg.connect(postgres_dsn)
        await pg_schema.migrate(setup)
        for statement in SETUP:
            await setup.execute(statement)
        one, two = [await asyncpg.connect(postgres_dsn) for _ in range(2)]
        try:
            first_tx = one.transaction()
            await first_tx.start()
            first = await pg_ingest.apply_usage(
                one, "node-a", [UsageDelta(1, "alice", 1, "1", half, 0, 0)], 1
            )
            second_tx = two.transaction()
            await second_tx.start()
            second = asyncio.create_task(
                pg_ingest.apply_usage(
                    two, "node-b", [UsageDelta(1, "alice", 1, "1", 0, half, 0)], 1
                )
            )
            await asyncio.sleep(0.3)
            waited = not second.done()  # blocked on alice's row until the first commits
            await first_tx.commit()
            second_applied = await asyncio.wait_for(second, 30)
            await second_tx.commit()
        finally:
            for conn in (setup, one, two):
                await conn.close()
        return first, second_applied, waited

    first, second, waited = asyncio.run(main())
    assert waited
    assert first.quota_used == {"alice": half}
    assert second.quota_used == {"alice": 2 * half}
    assert second.limits["alice"].data_limit_bytes == 10**9
