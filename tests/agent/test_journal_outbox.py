"""The outbox as one row per sample (outbox_sets, schema 5), on real SQLite files:
acks and hand-outs that end inside a sample, compaction into runs, a damaged
row, and journals of schema 4 carried over."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from edgeward.agent import journal_schema
from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    UPLINK,
    compute_deltas,
    proxy_counter,
    proxy_resolver,
)
from edgeward.agent.journal import Journal, JournalError, open_journal
from tests.support.old_journal import build_old_journal

EMAILS = {f"u{i}@x": f"user-{i}" for i in range(4)}
RESOLVE = proxy_resolver(EMAILS)


async def step(journal: Journal, n: int, users: int = 4) -> None:
    """Sample n: user i has moved n * (i + 1) bytes up and 10x that down."""
    readings = {}
    for i in range(users):
        readings[proxy_counter(f"u{i}@x", UPLINK)] = n * (i + 1)
        readings[proxy_counter(f"u{i}@x", DOWNLINK)] = n * (i + 1) * 10
    sample = compute_deltas(
        await journal.baselines(ENGINE_PROXY, "1"),
        readings,
        engine=ENGINE_PROXY,
        epoch="1",
        resolve=RESOLVE,
    )
    await journal.commit_sample(sample, sampled_at_ms=1000 * n)


def sets(path: Path) -> list[tuple[int, int, int]]:
    """(first_seq, last_seq, sampled_at_ms) of every stored outbox row."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT first_seq, last_seq, sampled_at_ms FROM outbox_sets ORDER BY first_seq"
        ).fetchall()
    finally:
        conn.close()


async def test_a_sample_is_one_row_and_an_ack_inside_it_keeps_the_rest(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        for n in (1, 2, 3):
            await step(journal, n)
        assert sets(path) == [(1, 4, 1000), (5, 8, 2000), (9, 12, 3000)]
        # pending across rows, from inside one, up to a limit inside another
        rows = await journal.pending(2, 5)
        assert [(r.seq, r.user_id, r.uplink, r.sampled_at_ms) for r in rows] == [
            (3, "user-2", 3, 1000),
            (4, "user-3", 4, 1000),
            (5, "user-0", 1, 2000),
            (6, "user-1", 2, 2000),
            (7, "user-2", 3, 2000),
        ]
        assert await journal.ack(6) == 6
        assert sets(path) == [(7, 8, 2000), (9, 12, 3000)]
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.uplink, stats.downlink) == (6, 3 + 4 + 10, 170)
        assert [r.seq for r in await journal.pending(0, 100)] == list(range(7, 13))
        assert await journal.ack(12) == 6
        assert sets(path) == []


async def test_compaction_cuts_at_the_hand_out_and_merges_the_rest_into_one_run(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        for n in (1, 2, 3):
            await step(journal, n)
        handed = await journal.pending(0, 6)  # seqs 1..6 may be on the wire
        await step(journal, 4, users=3)  # user-3 idle in the last sample
        before = await journal.outbox_totals()
        result = await journal.compact()
        assert (result.rows_before, result.rows_after) == (15, 6 + 4)
        assert await journal.outbox_totals() == before
        # handed out: untouched; user-3's merged delta keeps its own seq and time;
        # the three active users' merged deltas run on with one time: one row.
        assert sets(path) == [(1, 4, 1000), (5, 6, 2000), (12, 12, 3000), (13, 15, 4000)]
        rows = await journal.pending(0, 100)
        assert rows[:6] == handed
        assert [(r.seq, r.user_id, r.uplink) for r in rows[6:]] == [
            (12, "user-3", 4 + 4),  # seqs 8 and 12 (samples 2 and 3)
            (13, "user-0", 1 + 1),  # seqs 9, 13 (1 and 5 were handed out)
            (14, "user-1", 2 + 2),  # seqs 10, 14 (2 and 6 were handed out)
            (15, "user-2", 3 + 3 + 3),  # seqs 7, 11, 15
        ]
        assert (await journal.compact()).rows_after == 10  # nothing left to merge
        assert sets(path) == [(1, 4, 1000), (5, 6, 2000), (12, 12, 3000), (13, 15, 4000)]


async def test_a_damaged_outbox_row_is_a_clear_error_and_is_not_read_as_nothing(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await step(journal, 1)
        await step(journal, 2)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE outbox_sets SET uplinks = x'0102' WHERE first_seq = 5")  # torn
    conn.commit()
    conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    async with open_journal(path) as journal:
        with pytest.raises(JournalError) as info:
            await journal.pending(0, 100)
        assert (
            str(info.value)
            == f"journal {path}: damaged: outbox at seq 5: bytes length not a multiple of item size"
        )
        with pytest.raises(JournalError, match="damaged: outbox at seq 5"):
            await journal.compact()
        with pytest.raises(JournalError, match="damaged: outbox at seq 5"):
            await journal.outbox_totals()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def build_v4(path: Path) -> None:
    """A schema-4 journal with an outbox of one row per delta: two consecutive
    seqs of one sample, one of another sample, and one after a gap (compacted)."""
    build_old_journal(
        path,
        4,
        """
        BEGIN;
        UPDATE seqs SET high = 12, acked = 6, handed_out = 8;
        INSERT INTO epochs VALUES ('proxy', '1', 1000, '990');
        INSERT INTO streams VALUES (1, 'user-a', 'proxy', '1'), (2, 'user-b', 'proxy', '1');
        INSERT INTO outbox VALUES (7, 1, 100, 200, 50), (8, 2, 5, 0, 50),
            (9, 1, 7, 7, 60), (12, 2, 1, 1, 60);
        COMMIT;
        """,
    )


async def test_schema_4_outbox_becomes_rows_per_run_and_nothing_changes_for_central(tmp_path):
    path = tmp_path / "j.db"
    build_v4(path)
    async with open_journal(path) as journal:
        assert sets(path) == [(7, 8, 50), (9, 9, 60), (12, 12, 60)]
        rows = await journal.pending(6, 100)
        assert [(r.seq, r.user_id, r.uplink, r.downlink, r.sampled_at_ms) for r in rows] == [
            (7, "user-a", 100, 200, 50),
            (8, "user-b", 5, 0, 50),
            (9, "user-a", 7, 7, 60),
            (12, "user-b", 1, 1, 60),
        ]
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.uplink, stats.downlink, stats.high_seq) == (4, 113, 208, 12)
        # leases start charged with what is still unsent (schema 2's rule, on the new rows)
        assert await journal.grant_leases([("user-a", 1, 1000)]) == 1
        assert (await journal.leases())["user-a"].used == 100 + 200 + 7 + 7
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "outbox" not in tables and "outbox_sets" in tables


async def test_an_outbox_row_naming_an_unknown_stream_is_damage_not_skipped(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await step(journal, 1)
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE outbox_sets SET streams = ? WHERE first_seq = 1",
        (journal_schema.pack_ids([1, 2, 99, 4]),),
    )
    conn.commit()
    conn.close()
    async with open_journal(path) as journal:
        for read in (lambda: journal.pending(0, 100), journal.outbox_totals):
            with pytest.raises(JournalError) as info:
                await read()
            assert str(info.value).endswith("damaged: outbox seq 3 names unknown stream 99")
        assert (await journal.outbox_stats()).rows == 4  # nothing dropped
