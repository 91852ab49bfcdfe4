"""Ingest throughput: deltas/second through the real mTLS gRPC stream into SQLite,
against a raw `executemany` of the same rows into the same table in the same run.

    .venv/bin/python bench/ingest.py [--deltas 200000] [--batch 1000] [--users 1000]
        [--limit BYTES] [--profile] [--storage sqlite|postgresql]

Prints both rates and their ratio (goal: >= 100k deltas/s and >= 0.5x raw).
The node's encoding is done before timing (the agent does it on its own
machine); the node client shares this process and its 2 cores with central.
--storage postgresql: storage level only (bench/ingest_pg.py says why).
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
from tests.central.helpers import PROXY_INBOUNDS, make_pki, node_stream, running_central


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


async def through_stream(workdir: Path, batches, users: int, limit: int | None) -> float:
    pki = make_pki(workdir)
    database = workdir / "central.sqlite"
    storage = await SqliteStorage.open(database)
    await storage.add_node("node-a", PROXY_INBOUNDS, actor="bench")
    for i in range(users):
        await storage.create_user(
            f"user-{i}", actor="bench", node_ids=["node-a"], data_limit_bytes=limit
        )
    # The agent encodes on its own machine: only central's work (and the in-process
    # client's send/receive) is timed.
    messages = [encode_usage(batch) for batch in batches]
    try:
        async with (
            running_central(pki, storage, database) as port,
            node_stream(port, pki, pki.node("node-a")) as node,
        ):
            await node.handshake("node-a")
            # Pipelined like an agent: keep a few batches in flight, count acks.
            in_flight = 4
            start = time.perf_counter()
            pending = 0
            acked = 0
            for message in messages:
                await node.send(usage=message)
                pending += 1
                while pending >= in_flight:
                    kind, body = await node.recv()
                    if kind == "ack":
                        pending -= 1
                        acked = body.acked_seq
            while pending:
                kind, body = await node.recv()
                if kind == "ack":
                    pending -= 1
                    acked = body.acked_seq
            elapsed = time.perf_counter() - start
        assert acked == batches[-1][-1].seq, acked
        counted = await storage.node_usage("node-a")
        expected = (
            sum(d.uplink for b in batches for d in b),
            sum(d.downlink for b in batches for d in b),
        )
        assert counted == expected, (counted, expected)
        return elapsed
    finally:
        await storage.close()


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

        seconds = ingest_pg.run(batches, args.users)
        print(f"PostgreSQL, deltas: {args.deltas} in batches of {args.batch}, {args.users} users")
        for name, took in seconds.items():
            print(f"{name + ':':24}{args.deltas / took:12,.0f} deltas/s")
        for raw in ("raw COPY", "raw executemany"):
            ratio = seconds[raw] / seconds["apply_usage"]
            print(f"ratio apply_usage/{raw}: {ratio:.2f}x")
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_executemany(Path(tmp) / "raw.sqlite", batches)
        run = through_stream(Path(tmp) / "stream", batches, args.users, args.limit)
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            streamed = profile.runcall(asyncio.run, run)
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        else:
            streamed = asyncio.run(run)
    raw_rate = args.deltas / raw
    stream_rate = args.deltas / streamed
    limited = f", data limit {args.limit}" if args.limit is not None else ""
    print(f"deltas: {args.deltas} in batches of {args.batch}, {args.users} users{limited}")
    print(f"raw executemany:        {raw_rate:12,.0f} deltas/s")
    print(f"gRPC stream -> SQLite:  {stream_rate:12,.0f} deltas/s")
    print(f"ratio stream/raw:       {stream_rate / raw_rate:12.2f}x  (goal >= 0.5x, >= 100k/s)")


if __name__ == "__main__":
    main()
