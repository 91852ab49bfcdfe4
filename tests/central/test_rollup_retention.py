"""Rollup retention on both backends (real SQLite file, real PostgreSQL): monthly
partitions made ahead and from DEFAULT, old months pruned, totals kept; and the
migration that partitions usage_hourly keeps every existing row."""

from __future__ import annotations

import asyncio
import calendar
import sqlite3

import asyncpg

from edgeward.central import pg_schema, retention, schema
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta


def ms(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, 0, 0)) * 1000


NOW = ms(2026, 12, 10, 12)
# (seq, hour): months well before, just before and inside the kept window, and an
# odd far-future timestamp that no monthly partition holds (DEFAULT does).
SAMPLES = [
    (1, ms(2026, 1, 15, 3)),
    (2, ms(2026, 6, 30, 23)),
    (3, ms(2026, 8, 31, 23)),
    (4, ms(2026, 9, 1, 0)),
    (5, ms(2026, 12, 10, 11)),
    (6, ms(9999, 5, 1)),
]
PARTITIONED_VERSION = next(
    version
    for version, statements in enumerate(schema.MIGRATIONS, start=1)
    if any("usage_hourly_by_hour" in s for s in statements)
)


async def hourly_rows(backend: StorageBackend) -> list[tuple]:
    query = (
        "SELECT user_id, node_id, engine, hour_ms, uplink_bytes, downlink_bytes FROM usage_hourly"
    )
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location)
        try:
            return sorted(conn.execute(query).fetchall())
        finally:
            conn.close()
    conn = await asyncpg.connect(str(backend.location))
    try:
        return sorted(tuple(row) for row in await conn.fetch(query))
    finally:
        await conn.close()


async def partitions(backend: StorageBackend) -> list[str]:
    conn = await asyncpg.connect(str(backend.location))
    try:
        from edgeward.central.pg_retention import list_partitions

        return await list_partitions(conn)
    finally:
        await conn.close()


def test_old_months_are_pruned_and_totals_kept(storage_backend: StorageBackend):
    async def main():
        storage = await storage_backend.open()
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await storage.create_user("alice", actor="t", node_ids=["node-a"])
            batch = [delta(seq, "alice", up=seq, down=10 * seq, at_ms=at) for seq, at in SAMPLES]
            await storage.ingest("node-a", batch)  # the far-future hour must not fail it
            before = await hourly_rows(storage_backend)
            made = await storage.prepare_rollups(NOW)
            after_prepare = await hourly_rows(storage_backend)
            parts = await partitions(storage_backend) if storage_backend.name != "sqlite" else []
            made_again = await storage.prepare_rollups(NOW)
            cutoff = retention.rollup_cutoff_ms(NOW, 3)
            pruned = await storage.prune_rollups(cutoff)
            kept = await hourly_rows(storage_backend)
            left = await partitions(storage_backend) if storage_backend.name != "sqlite" else []
            user = await storage.get_user("alice")
            node = await storage.node_usage("node-a")
            # A month whose partition was dropped still takes a late delta (DEFAULT).
            await storage.ingest("node-a", [delta(7, "alice", up=7, at_ms=ms(2026, 2, 1))])
            late = await hourly_rows(storage_backend)
        finally:
            await storage.close()
        return before, made, after_prepare, parts, made_again, pruned, kept, left, user, node, late

    before, made, after_prepare, parts, made_again, pruned, kept, left, user, node, late = (
        asyncio.run(main())
    )
    assert len(before) == len(SAMPLES)
    assert after_prepare == before  # moving rows into partitions loses and adds nothing
    assert made_again == []
    assert [row[3] for row in kept] == [ms(2026, 9, 1), ms(2026, 12, 10, 11), ms(9999, 5, 1)]
    total = sum(seq for seq, _ in SAMPLES)
    assert (user.uplink_bytes, user.downlink_bytes) == (total, 10 * total)  # not reduced
    assert user.quota_used_bytes == 11 * total
    assert node == (total, 10 * total)
    assert ms(2026, 2, 1) in [row[3] for row in late]
    if storage_backend.name == "sqlite":
        assert made == [] and pruned == retention.RollupPrune(0, 3)
        return
    # Months found in DEFAULT get partitions of their own; the odd hour stays there.
    months = ["202601", "202606", "202608", "202609", "202612", "202701"]
    assert made == [f"usage_hourly_p{m}" for m in months]
    assert parts == sorted([*made, "usage_hourly_default"])
    assert pruned == retention.RollupPrune(3, 0)  # whole partitions, no row deleted
    assert left == sorted([f"usage_hourly_p{m}" for m in months[3:]] + ["usage_hourly_default"])


def test_sqlite_prune_deletes_in_bounded_batches(tmp_path, monkeypatch):
    from edgeward.central import sqlite_retention
    from edgeward.central.storage import SqliteStorage

    monkeypatch.setattr(sqlite_retention, "DELETE_BATCH", 2)
    monkeypatch.setattr(sqlite_retention, "MAX_BATCHES", 2)

    async def main():
        storage = await SqliteStorage.open(tmp_path / "c.sqlite")
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await storage.create_user("alice", actor="t", node_ids=["node-a"])
            hours = [ms(2025, 1, 1, h) for h in range(7)]
            await storage.ingest(
                "node-a", [delta(i + 1, "alice", 1, 1, h) for i, h in enumerate(hours)]
            )
            first = await storage.prune_rollups(ms(2026, 1, 1))
            second = await storage.prune_rollups(ms(2026, 1, 1))
            third = await storage.prune_rollups(ms(2026, 1, 1))
        finally:
            await storage.close()
        return first.rows_deleted, second.rows_deleted, third.rows_deleted

    assert asyncio.run(main()) == (4, 3, 0)  # 2 batches of 2 per call, then the rest


def test_migration_keeps_rows_written_at_the_previous_version(storage_backend: StorageBackend):
    rows = [("alice", "node-a", 1, at, seq, 10 * seq) for seq, at in SAMPLES] + [
        ("bob", "node-b", 2, ms(2026, 12, 1), 5, 6)
    ]
    insert = "INSERT INTO usage_hourly VALUES (?, ?, ?, ?, ?, ?)"

    async def main():
        if storage_backend.name == "sqlite":
            conn = sqlite3.connect(storage_backend.location, isolation_level=None)
            schema.migrate(conn, target=PARTITIONED_VERSION - 1)
            conn.executemany(insert, rows)
            conn.close()
        else:
            conn = await asyncpg.connect(str(storage_backend.location))
            await pg_schema.migrate(conn, target=PARTITIONED_VERSION - 1)
            await conn.executemany(insert.replace("?", "${}").format(*range(1, 7)), rows)
            await conn.close()
        before = await hourly_rows(storage_backend)
        storage = await storage_backend.open()  # migrates to the latest version
        try:
            migrated = await hourly_rows(storage_backend)
            await storage.prepare_rollups(NOW)
            prepared = await hourly_rows(storage_backend)
        finally:
            await storage.close()
        kind = None
        if storage_backend.name != "sqlite":
            conn = await asyncpg.connect(str(storage_backend.location))
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE relname = 'usage_hourly'"
            )
            in_default = await conn.fetch("SELECT hour_ms FROM usage_hourly_default")
            await conn.close()
            kind = (kind, [row[0] for row in in_default])
        return before, migrated, prepared, kind

    before, migrated, prepared, kind = asyncio.run(main())
    assert before == sorted(rows)
    assert migrated == before and prepared == before
    if storage_backend.name != "sqlite":
        # Partitioned; after prepare_rollups only the odd hour is left in DEFAULT.
        assert kind == ("p", [ms(9999, 5, 1)])


def test_ingest_goes_on_while_replicas_make_partitions(postgres_dsn: str):
    """Ingest on one replica writes into a month that sits in DEFAULT while two others
    make that month's partition at once: no ingest fails (no deadlock), the partition is
    made once, and every byte is in the rollups once."""
    from edgeward.central.pg_storage import PgStorage

    month = ms(2026, 3)
    batches = [
        [delta(b * 10 + i + 1, "alice", 1, 2, month + (b * 10 + i) * 60_000) for i in range(10)]
        for b in range(40)
    ]

    async def main():
        writer, *makers = [await PgStorage.open(postgres_dsn) for _ in range(3)]
        try:
            await writer.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await writer.create_user("alice", actor="t", node_ids=["node-a"])
            await writer.ingest("node-a", batches[0])  # the month's first rows: in DEFAULT

            async def ingest_rest():
                for batch in batches[1:]:
                    await writer.ingest("node-a", batch)

            async def make_after(delay_batches: int, maker):
                await asyncio.sleep(0.001 * delay_batches)
                return await maker.prepare_rollups(month)

            results = await asyncio.wait_for(
                asyncio.gather(ingest_rest(), make_after(1, makers[0]), make_after(2, makers[1])),
                60,
            )
            user = await writer.get_user("alice")
            rows = await writer.hourly_usage("alice")
        finally:
            for storage in (writer, *makers):
                await storage.close()
        return results[1] + results[2], user, rows

    made, user, rows = asyncio.run(main())
    assert made.count("usage_hourly_p202603") == 1
    assert (user.uplink_bytes, user.downlink_bytes) == (400, 800)
    assert sum(row[3] for row in rows) == 400 and sum(row[4] for row in rows) == 800


def test_ingest_goes_on_while_another_replica_drops_old_months(postgres_dsn: str):
    """Late deltas of an old month keep coming on one replica while another drops that
    month: no ingest fails, and the users' totals count every delta."""
    from edgeward.central.pg_storage import PgStorage

    old = ms(2025, 1)
    batches = [
        [delta(b * 10 + i + 1, "alice", 1, 2, old + (b * 10 + i) * 60_000) for i in range(10)]
        for b in range(40)
    ]

    async def main():
        writer, pruner = [await PgStorage.open(postgres_dsn) for _ in range(2)]
        try:
            await writer.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await writer.create_user("alice", actor="t", node_ids=["node-a"])
            await writer.ingest("node-a", batches[0])
            await pruner.prepare_rollups(old)  # the old month has its partition

            async def ingest_rest():
                for batch in batches[1:]:
                    await writer.ingest("node-a", batch)

            async def prune_soon():
                await asyncio.sleep(0.002)
                return await pruner.prune_rollups(ms(2026, 1))

            _, pruned = await asyncio.wait_for(asyncio.gather(ingest_rest(), prune_soon()), 60)
            user = await writer.get_user("alice")
            left = await partitions(StorageBackend("postgresql", postgres_dsn))
        finally:
            await writer.close()
            await pruner.close()
        return pruned, user, left

    pruned, user, left = asyncio.run(main())
    assert pruned.partitions_dropped == 2  # January 2025 and the next month made ahead
    assert not {"usage_hourly_p202501", "usage_hourly_p202502"} & set(left)
    assert (user.uplink_bytes, user.downlink_bytes) == (400, 800)
