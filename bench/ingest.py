"""Ingest throughput: deltas/second through the real mTLS gRPC stream into SQLite,
against a raw `executemany` of the same rows into the same table in the same run.

    .venv/bin/python bench/ingest.py [--deltas 200000] [--batch 1000] [--users 1000]
        [--limit BYTES] [--profile] [--storage sqlite|postgresql]

Prints both rates and their ratio (goal: >= 100k deltas/s and >= 0.5x raw).
The node's encoding is done before timing (the agent does it on its own
machine); the node client shares this process and its 2 cores with central.
--storage postgresql: the same stream into central on PostgreSQL, against raw
COPY and raw executemany into the same table (bench/ingest_pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeward.central import schema
from edgeward.central.storage import SqliteStorage
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, encode_usage
from tests.central.helpers import (
    PROXY_INBOUNDS,
    TestPki,
    central_config,
    config_toml,
    make_pki,
    node_stream,
    running_central,
)
from tests.central.test_crash import Child
from tests.support.ports import free_port


def make_batches(total: int, batch: int, users: int) -> list[list[UsageDelta]]:
    deltas = [
        UsageDelta(
            seq, f"user-{seq % users}", int(v1.Engine.PROXY), "e1", seq % 977, seq % 1999,
            1_700_000_000_000 + seq * 10,
        )
        for seq in range(1, total + 1)
    ]  # fmt: skip
    return [deltas[i : i + batch] for i in range(0, total, batch)]


def raw_executemany(path: Path, batches: list[list[UsageDelta]]) -> float:
    """The baseline: the same ledger rows, one executemany + commit per batch, same PRAGMAs."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    schema.migrate(conn)
    start = time.perf_counter()
    for batch in batches:
        rows = [("node-a", *d, 1) for d in batch]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO deltas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def prepare(workdir: Path, users: int, limit: int | None) -> tuple[TestPki, Path]:
    pki = make_pki(workdir)
    database = workdir / "central.sqlite"
    storage = await SqliteStorage.open(database)
    await storage.add_node("node-a", PROXY_INBOUNDS, actor="bench")
    for i in range(users):
        await storage.create_user(
            f"user-{i}", actor="bench", node_ids=["node-a"], data_limit_bytes=limit
        )
    await storage.close()
    return pki, database


async def pump(port: int, pki: TestPki, messages: list[v1.UsageBatch]) -> tuple[float, int]:
    """Send every batch pipelined like an agent (a few in flight); seconds until the last ack."""
    async with node_stream(port, pki, pki.node("node-a")) as node:
        await node.handshake("node-a")
        in_flight = 4
        start = time.perf_counter()
        pending = 0
        acked = 0
        for message in messages:
            await node.send(usage=message)
            pending += 1
            while pending >= in_flight or (message is messages[-1] and pending):
                kind, body = await node.recv()
                if kind == "ack":
                    pending -= 1
                    acked = body.acked_seq
        return time.perf_counter() - start, acked


async def check_totals(database: Path, batches: list[list[UsageDelta]]) -> None:
    storage = await SqliteStorage.open(database)
    try:
        counted = await storage.node_usage("node-a")
    finally:
        await storage.close()
    expected = (
        sum(d.uplink for b in batches for d in b),
        sum(d.downlink for b in batches for d in b),
    )
    assert counted == expected, (counted, expected)


async def in_process(workdir: Path, batches, users: int, limit: int | None) -> float:
    """central and the node client on one event loop in this process."""
    pki, database = await prepare(workdir, users, limit)
    # The agent encodes on its own machine: only the wire and central's work are timed.
    messages = [encode_usage(batch) for batch in batches]
    storage = await SqliteStorage.open(database)
    try:
        async with running_central(pki, storage, database) as port:
            elapsed, acked = await pump(port, pki, messages)
    finally:
        await storage.close()
    assert acked == batches[-1][-1].seq, acked
    await check_totals(database, batches)
    return elapsed


async def central_process(workdir: Path, batches, users: int, limit: int | None) -> float:
    """central in its own process (edgeward's server, as deployed); this one is the node."""
    pki, database = await prepare(workdir, users, limit)
    messages = [encode_usage(batch) for batch in batches]
    config = workdir / "central.toml"
    config.write_text(config_toml(central_config(pki, database, port=free_port())))
    child = Child(config)
    try:
        elapsed, acked = await pump(child.port(), pki, messages)
    finally:
        child.stop()
    assert acked == batches[-1][-1].seq, acked
    await check_totals(database, batches)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument(
        "--limit", type=int, default=None, help="give every user this data limit (leases)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the streamed run")
    parser.add_argument("--storage", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    batches = make_batches(args.deltas, args.batch, args.users)
    if args.storage == "postgresql":
        from bench import ingest_pg

        seconds = ingest_pg.run(batches, args.users, pump, args.limit)
        limited = f", data limit {args.limit} (streamed runs)" if args.limit is not None else ""
        print(
            f"PostgreSQL, deltas: {args.deltas} in batches of {args.batch},"
            f" {args.users} users{limited}"
        )
        for name, took in seconds.items():
            print(f"{name + ':':38}{args.deltas / took:10,.0f} deltas/s")
        print("ratios (rate / raw rate, same table, same run):")
        for ours in ("apply_usage", ingest_pg.STREAM_IN_PROCESS, ingest_pg.STREAM_APART):
            versus = "  ".join(
                f"vs {raw} {seconds[raw] / seconds[ours]:.2f}x"
                for raw in ("raw COPY", "raw executemany")
            )
            print(f"  {ours + ':':38}{versus}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_executemany(Path(tmp) / "raw.sqlite", batches)
        run = in_process(Path(tmp) / "stream", batches, args.users, args.limit)
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            streamed = profile.runcall(asyncio.run, run)
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        else:
            streamed = asyncio.run(run)
        apart = asyncio.run(central_process(Path(tmp) / "apart", batches, args.users, args.limit))
    raw_rate = args.deltas / raw
    limited = f", data limit {args.limit}" if args.limit is not None else ""
    print(f"deltas: {args.deltas} in batches of {args.batch}, {args.users} users{limited}")
    print(f"raw executemany:                            {raw_rate:10,.0f} deltas/s")
    for name, took in (("node client in process", streamed), ("central in own process", apart)):
        rate = args.deltas / took
        print(
            f"gRPC stream -> SQLite, {name}: {rate:10,.0f} deltas/s"
            f"  ratio {rate / raw_rate:.2f}x  (goal >= 0.5x, >= 100k/s)"
        )


if __name__ == "__main__":
    main()
