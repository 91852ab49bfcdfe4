"""`bench/ingest.py --storage postgresql`: ingest on a private PostgreSQL cluster.

Storage level only for now: `pg_ingest.apply_usage` (ledger, rollups, totals,
exactly-once check, one transaction per batch) against a raw binary COPY and a
raw `executemany` of the same ledger rows into the same table, in the same run.
The gRPC stream needs the whole PostgreSQL Storage (issue 10: admin not ported).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from edgeward.central import pg_ingest, pg_schema
from edgeward.proto.usage_codec import UsageDelta
from tests.support.postgres import PostgresCluster, postgres_bindir

INSERT_LEDGER = (
    "INSERT INTO deltas (node_id, seq, user_id, engine, epoch, uplink_bytes, downlink_bytes,"
    " sampled_at_ms, counted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


async def _fresh(cluster: PostgresCluster, users: int) -> asyncpg.Connection:
    conn = await asyncpg.connect(cluster.new_database())
    await pg_schema.migrate(conn)
    await conn.execute("INSERT INTO nodes (node_id, created_at_ms) VALUES ('node-a', 0)")
    names = [f"user-{i}" for i in range(users)]
    await conn.executemany(
        "INSERT INTO users (user_id, created_at_ms) VALUES ($1, 0)", [(n,) for n in names]
    )
    await conn.executemany(
        "INSERT INTO assignments (user_id, node_id, assigned_at_ms) VALUES ($1, 'node-a', 0)",
        [(n,) for n in names],
    )
    return conn


async def _timed(cluster, users, batches, apply) -> float:
    conn = await _fresh(cluster, users)
    try:
        start = time.perf_counter()
        for batch in batches:
            async with conn.transaction():
                await apply(conn, batch)
        return time.perf_counter() - start
    finally:
        await conn.close()


async def _copy(conn, batch: list[UsageDelta]) -> None:
    rows = [("node-a", *d, 1) for d in batch]
    await conn.copy_records_to_table("deltas", records=rows, columns=pg_ingest.LEDGER_COLUMNS)


async def _executemany(conn, batch: list[UsageDelta]) -> None:
    await conn.executemany(INSERT_LEDGER, [("node-a", *d, 1) for d in batch])


async def _ingest(conn, batch: list[UsageDelta]) -> None:
    await pg_ingest.apply_usage(conn, "node-a", batch, 1)


def run(batches: list[list[UsageDelta]], users: int) -> dict[str, float]:
    """Seconds taken by each way of writing the batches."""
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/setup installs it)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()

        async def main() -> dict[str, float]:
            return {
                "raw COPY": await _timed(cluster, users, batches, _copy),
                "raw executemany": await _timed(cluster, users, batches, _executemany),
                "apply_usage": await _timed(cluster, users, batches, _ingest),
            }

        return asyncio.run(main())
    finally:
        cluster.stop()
