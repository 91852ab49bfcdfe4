"""`bench/ingest.py --storage postgresql`: ingest into a private PostgreSQL cluster.

Times, each into a fresh database of the same cluster, in the same run:
- raw binary COPY and raw `executemany` of the same ledger rows into the same
  table (`deltas`), one transaction per batch: the baselines;
- `pg_ingest.apply_usage` at storage level (ledger, rollups, totals,
  exactly-once check, one transaction per batch);
- the whole path: the node's batches over the real mTLS gRPC stream into
  central serving a PgStorage, with the node client in this process, and with
  central in its own process (`edgeward-central` as deployed, this process
  being the node). Both check central's totals afterwards.
The rollups' monthly partition for the batches' month is made first, as a
running central has it (retention.py), so rows land where production's do.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from edgeward.central import pg_ingest, pg_schema
from edgeward.central.pg_storage import PgStorage
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, encode_usage
from tests.central.helpers import (
    PROXY_INBOUNDS,
    TestPki,
    central_config,
    config_toml,
    make_pki,
    running_central,
)
from tests.central.test_crash import Child
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster, postgres_bindir

INSERT_LEDGER = (
    "INSERT INTO deltas (node_id, seq, user_id, engine, epoch, uplink_bytes, downlink_bytes,"
    " sampled_at_ms, counted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
# pump(port, pki, messages) -> (seconds until the last ack, acked seq): bench/ingest.py's.
Pump = Callable[[int, TestPki, list[v1.UsageBatch]], Awaitable[tuple[float, int]]]


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


async def _central_database(
    cluster: PostgresCluster, users: int, batches: list[list[UsageDelta]], limit: int | None
) -> str:
    """A database as central's admin leaves it: the node, its users, this month's partition."""
    dsn = cluster.new_database()
    storage = await PgStorage.open(dsn)
    try:
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="bench")
        for i in range(users):
            await storage.create_user(
                f"user-{i}", actor="bench", node_ids=["node-a"], data_limit_bytes=limit
            )
        await storage.prepare_rollups(batches[0][0].sampled_at_ms)
    finally:
        await storage.close()
    return dsn


async def _check_totals(dsn: str, batches: list[list[UsageDelta]], acked: int) -> None:
    storage = await PgStorage.open(dsn)
    try:
        counted = await storage.node_usage("node-a")
    finally:
        await storage.close()
    expected = (
        sum(d.uplink for b in batches for d in b),
        sum(d.downlink for b in batches for d in b),
    )
    assert acked == batches[-1][-1].seq, acked
    assert counted == expected, (counted, expected)


async def _streamed_in_process(cluster, users, batches, limit, pump: Pump, workdir: Path) -> float:
    dsn = await _central_database(cluster, users, batches, limit)
    pki = make_pki(workdir / "in-process")
    messages = [encode_usage(batch) for batch in batches]  # the agent's work, not timed
    storage = await PgStorage.open(dsn, listen=True)
    try:
        async with running_central(pki, storage, workdir / "unused") as port:
            elapsed, acked = await pump(port, pki, messages)
    finally:
        await storage.close()
    await _check_totals(dsn, batches, acked)
    return elapsed


async def _streamed_central_process(
    cluster, users, batches, limit, pump: Pump, workdir: Path
) -> float:
    dsn = await _central_database(cluster, users, batches, limit)
    pki = make_pki(workdir / "apart")
    messages = [encode_usage(batch) for batch in batches]
    config = workdir / "central.toml"
    config.write_text(config_toml(central_config(pki, dsn, port=free_port())))  # type: ignore[arg-type]
    child = Child(config)
    try:
        elapsed, acked = await pump(child.port(), pki, messages)
    finally:
        child.stop()
    await _check_totals(dsn, batches, acked)
    return elapsed


STREAM_IN_PROCESS = "gRPC stream, node client in process"
STREAM_APART = "gRPC stream, central in own process"


def run(
    batches: list[list[UsageDelta]], users: int, pump: Pump, limit: int | None = None
) -> dict[str, float]:
    """Seconds taken by each way of writing the batches (limit: every user's data limit
    in the streamed runs, so leases are granted and counted)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/setup installs it)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()

        async def main(workdir: Path) -> dict[str, float]:
            return {
                "raw COPY": await _timed(cluster, users, batches, _copy),
                "raw executemany": await _timed(cluster, users, batches, _executemany),
                "apply_usage": await _timed(cluster, users, batches, _ingest),
                STREAM_IN_PROCESS: await _streamed_in_process(
                    cluster, users, batches, limit, pump, workdir
                ),
                STREAM_APART: await _streamed_central_process(
                    cluster, users, batches, limit, pump, workdir
                ),
            }

        with tempfile.TemporaryDirectory() as tmp:
            return asyncio.run(main(Path(tmp)))
    finally:
        cluster.stop()
