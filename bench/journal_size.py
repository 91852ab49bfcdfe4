"""How big does the agent journal grow while central is unreachable?

10,000 users, every one of them moving traffic in every sample, one sample
every 10 s (8,640 samples a day): the worst case for the outbox. Prints
bytes/day of outbox growth without compaction (one packed row per sample),
the steady size with compaction after every sample, the bytes written to disk per day (WAL frames:
baselines are rewritten every sample), and ratios against two baselines
measured in the same run: the same deltas in a naive outbox layout (a row per
delta, user id, engine and epoch spelled out in each) and the uncompacted
journal.

    .venv/bin/python bench/journal_size.py [--users 10000] [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    UPLINK,
    compute_deltas,
    proxy_counter,
    proxy_resolver,
)
from edgeward.agent.journal_store import JournalStore

SAMPLES_PER_DAY = 24 * 3600 // 10


def used_bytes(store: JournalStore) -> int:
    """Bytes of the database in use (pages minus free pages), WAL included
    in the count once checkpointed; independent of WAL file size."""
    conn = store._conn
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    pages, free, size = (
        conn.execute(f"PRAGMA {pragma}").fetchone()[0]
        for pragma in ("page_count", "freelist_count", "page_size")
    )
    return (pages - free) * size


def written_bytes() -> int:
    """Bytes this process handed to write(2) so far (WAL frames and checkpoints)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def run(path: Path, users: int, samples: int, compact: bool, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    emails = {
        f"{i:08d}-user@example.org": f"{i:08d}-5b0e-4c2e-9a51-0123456789ab" for i in range(users)
    }
    resolve = proxy_resolver(emails)
    names = [(proxy_counter(e, UPLINK), proxy_counter(e, DOWNLINK)) for e in emails]
    counters = {n: 0 for pair in names for n in pair}
    store = JournalStore.open(path)
    written = 0
    commit_s = compact_s = 0.0
    start_size, first = used_bytes(store), 0
    for step in range(1, samples + 1):
        for up, down in names:
            counters[up] += rng.randrange(1, 200_000)
            counters[down] += rng.randrange(1, 2_000_000)
        sample = compute_deltas(
            store.baselines(ENGINE_PROXY, "1"),
            counters,
            engine=ENGINE_PROXY,
            epoch="1",
            resolve=resolve,
        )
        w0 = written_bytes()
        t0 = time.perf_counter()
        store.commit_sample(sample, sampled_at_ms=1_700_000_000_000 + step * 10_000)
        t1 = time.perf_counter()
        if compact:
            store.compact()
        t2 = time.perf_counter()
        commit_s += t1 - t0
        compact_s += t2 - t1
        written += written_bytes() - w0
        if step == 1:  # streams and baselines are created once: not growth
            start_size, first = used_bytes(store), 1
    rows = store.outbox_stats().rows
    size = used_bytes(store)
    store.close()
    return {
        "rows": rows,
        "size": size,
        "growth_per_sample": (size - start_size) / (samples - first),
        "written_per_sample": written / samples,
        "commit_ms": 1000 * commit_s / samples,
        "compact_ms": 1000 * compact_s / samples,
    }


def naive_bytes_per_row(path: Path, users: int, seed: int) -> float:
    """The same outbox rows with user id, engine and epoch in every row."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, user_id TEXT, engine TEXT, "
        "epoch TEXT, uplink INTEGER, downlink INTEGER, sampled_at_ms INTEGER)"
    )
    rows = [
        (
            seq,
            f"{seq % users:08d}-5b0e-4c2e-9a51-0123456789ab",
            ENGINE_PROXY,
            "1",
            rng.randrange(1, 200_000),
            rng.randrange(1, 2_000_000),
            1_700_000_000_000,
        )
        for seq in range(1, 5 * users + 1)
    ]
    empty = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - empty
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return pages * page / len(rows)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    seed = int.from_bytes(os.urandom(4), "big")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        plain = run(tmp_path / "plain.db", args.users, args.samples, compact=False, seed=seed)
        packed = run(tmp_path / "packed.db", args.users, args.samples, compact=True, seed=seed)
        naive_row = naive_bytes_per_row(tmp_path / "naive.db", args.users, seed)

    row = plain["growth_per_sample"] / args.users
    per_day = plain["growth_per_sample"] * SAMPLES_PER_DAY
    print(f"{args.users} users, all active, 1 sample / 10 s = {SAMPLES_PER_DAY} samples/day")
    print(f"measured over {args.samples} samples (seed {seed})")
    print()
    print("without compaction (outbox grows one delta per user per sample, one row per sample):")
    print(f"  bytes/delta on disk         {row:8.1f}   (naive, a row per delta: {naive_row:.1f})")
    print(f"  growth per sample           {mb(plain['growth_per_sample'])}")
    print(f"  growth per day              {mb(per_day)}")
    print(f"  deltas per day              {args.users * SAMPLES_PER_DAY:,}")
    print("with compaction after every sample (one delta per user per epoch):")
    print(f"  steady size                 {mb(packed['size'])}  ({packed['rows']:,} outbox deltas)")
    print(f"  growth per day              {mb(0)} after the first sample (size does not grow)")
    print()
    print(
        "bytes written (write(2): WAL frames and checkpoints; baselines are rewritten each sample):"
    )
    print(
        f"  per sample                  {mb(plain['written_per_sample'])} plain, "
        f"{mb(packed['written_per_sample'])} compacting"
    )
    print(
        f"  per day                     {mb(plain['written_per_sample'] * SAMPLES_PER_DAY)} plain, "
        f"{mb(packed['written_per_sample'] * SAMPLES_PER_DAY)} compacting"
    )
    print()
    day_uncompacted = plain["size"] + plain["growth_per_sample"] * (SAMPLES_PER_DAY - args.samples)
    print("ratios (same run):")
    print(f"  packed deltas / naive rows          {row / naive_row:.2f}")
    print(f"  compacted size / uncompacted, 1 day {packed['size'] / day_uncompacted:.5f}")
    print(
        f"  compact time / commit time          {packed['compact_ms'] / plain['commit_ms']:.2f}"
        f"  (commit {plain['commit_ms']:.0f} ms, compact {packed['compact_ms']:.0f} ms per sample)"
    )


if __name__ == "__main__":
    main()
