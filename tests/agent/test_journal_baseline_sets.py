"""Baselines stored as one packed row per engine (journal schema 4) on real
SQLite files: a schema-3 journal converts in place, losing and repeating
nothing; a damaged row is a clear startup error; idle rounds write nothing."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from edgeward.agent import journal_schema
from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    ENGINE_WIREGUARD,
    UPLINK,
    CounterError,
    Sample,
    compute_deltas,
    proxy_counter,
    proxy_resolver,
)
from edgeward.agent.journal import SCHEMA_VERSION, Journal, JournalError, open_journal

USERS = 300
RESOLVE = proxy_resolver({f"u{i}@x": f"user-{i}" for i in range(USERS)})


def up(i: int) -> str:
    return proxy_counter(f"u{i}@x", UPLINK)


def down(i: int) -> str:
    return proxy_counter(f"u{i}@x", DOWNLINK)


def build_v3(path: Path) -> dict[str, int]:
    """A schema-3 journal in epoch "3": baselines of USERS users (some only one
    direction), a stale baseline of epoch "2", a WireGuard engine, and an outbox
    of 3 unacked rows (central acked up to seq 6; seq 7 was handed out). Returns the
    proxy baselines it holds."""
    conn = journal_schema.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    journal_schema.migrate(conn, path, target=3)
    baselines: dict[str, int] = {}
    counters, rows = [], []
    for i in range(USERS):
        for name, value in ((up(i), 1000 + i), (down(i), 0 if i % 7 == 0 else 5000 + i)):
            counter = len(counters) + 1
            counters.append((counter, ENGINE_PROXY, name))
            if value:
                rows.append((counter, "3", value))
                baselines[name] = value
    counters.append((len(counters) + 1, ENGINE_PROXY, "user>>>gone@x>>>traffic>>>uplink"))
    rows.append((len(counters), "2", 77))  # a previous epoch's leftover: not carried
    counters.append((len(counters) + 1, ENGINE_WIREGUARD, "wg>>>wg0>>>KEY=>>>rx"))
    rows.append((len(counters), "5", 123))
    conn.execute("BEGIN")
    conn.execute("UPDATE seqs SET high = 9, acked = 6, handed_out = 7")
    conn.execute("INSERT INTO epochs VALUES ('proxy', '3', 1000, '990')")
    conn.execute("INSERT INTO epochs VALUES ('wireguard', '5', 1000, '{}')")
    conn.executemany("INSERT INTO counters VALUES (?, ?, ?)", counters)
    conn.executemany("INSERT INTO baselines VALUES (?, ?, ?)", rows)
    conn.execute("INSERT INTO streams VALUES (1, 'user-1', 'proxy', '3')")
    conn.executemany(
        "INSERT INTO outbox VALUES (?, 1, ?, ?, ?)",
        [(7, 2, 2, 12), (8, 3, 3, 13), (9, 4, 4, 14)],
    )
    conn.execute("COMMIT")
    conn.close()
    return baselines


async def test_schema_3_journal_converts_and_nothing_is_lost_or_sent_twice(tmp_path):
    path = tmp_path / "journal.db"
    stored = build_v3(path)
    async with open_journal(path) as journal:
        assert await journal.baselines(ENGINE_PROXY, "3") == stored
        assert await journal.baselines(ENGINE_WIREGUARD, "5") == {"wg>>>wg0>>>KEY=>>>rx": 123}
        assert await journal.epoch_marker(ENGINE_PROXY) == "990"
        # the unsent outbox: from acked+1, each row once, seqs unchanged
        pending = await journal.pending(6, 100)
        assert [(r.seq, r.user_id, r.uplink) for r in pending] == [
            (7, "user-1", 2),
            (8, "user-1", 3),
            (9, "user-1", 4),
        ]
        # the next reading counts only what moved since the stored baselines
        readings = {name: value + 10 for name, value in stored.items()}
        readings[down(0)] = 4  # was absent (0) in the baselines
        sample = compute_deltas(
            await journal.baselines(ENGINE_PROXY, "3"),
            readings,
            engine=ENGINE_PROXY,
            epoch="3",
            resolve=RESOLVE,
        )
        assert not sample.went_down
        assert await journal.commit_sample(sample, sampled_at_ms=20) == (10, 9 + USERS)
        deltas = {d.user_id: (d.uplink, d.downlink) for d in sample.deltas}
        assert deltas["user-0"] == (10, 4)
        assert deltas["user-7"] == (10, 0)
        assert deltas["user-8"] == (10, 10)
        assert await journal.ack(9) == 3
    # the converted journal reopens with the baselines the last sample stored
    async with open_journal(path) as journal:
        assert await journal.baselines(ENGINE_PROXY, "3") == readings
        assert (await journal.outbox_stats()).rows == USERS
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()
    assert "baselines" not in tables and "baseline_sets" in tables


async def test_failed_conversion_rolls_back_to_schema_3(tmp_path, monkeypatch):
    path = tmp_path / "journal.db"
    stored = build_v3(path)
    convert = journal_schema.MIGRATIONS[3]
    assert callable(convert)

    def broken(conn: sqlite3.Connection) -> None:
        convert(conn)
        raise ValueError("torn in the middle")

    monkeypatch.setattr(journal_schema, "MIGRATIONS", [*journal_schema.MIGRATIONS[:3], broken])
    with pytest.raises(JournalError, match="migration to schema 4 failed: torn in the middle"):
        await Journal.open(path)
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM baselines").fetchone()[0] == len(stored) + 2
    conn.close()
    async with open_journal(path) as journal:  # and converts fine afterwards
        assert await journal.baselines(ENGINE_PROXY, "3") == stored


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("UPDATE baseline_sets SET counts = substr(counts, 1, 13)", "damaged: baselines of proxy"),
        ("UPDATE baseline_sets SET counts = substr(counts, 1, 8)", "2 counters, 1 counts"),
        ("DELETE FROM counters WHERE id = 1", "unknown counter 1"),
        (
            # counter 1 twice (ids are little-endian int64s)
            "UPDATE baseline_sets SET counter_ids = x'01000000000000000100000000000000'",
            "a counter appears twice",
        ),
        ("UPDATE baseline_sets SET counts = 'text'", "damaged: baselines of proxy"),
        (
            "UPDATE baseline_sets SET epoch = '0'",
            "proxy are of epoch '0', its current epoch is '1'",
        ),
        (
            "INSERT INTO baseline_sets VALUES ('wireguard', '1', x'', x'')",
            "wireguard are of epoch '1', its current epoch is None",
        ),
    ],
)
async def test_damaged_baseline_set_is_a_clear_error_and_left_untouched(tmp_path, damage, reason):
    path = tmp_path / "journal.db"
    async with open_journal(path) as journal:
        sample = compute_deltas(
            {}, {up(0): 5, down(0): 9}, engine=ENGINE_PROXY, epoch="1", resolve=RESOLVE
        )
        await journal.commit_sample(sample, sampled_at_ms=1)
    conn = sqlite3.connect(path)
    conn.execute(damage)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(path)
    with pytest.raises(JournalError, match=reason):
        await Journal.open(path)
    assert _digest(path) == before


async def test_baseline_beyond_uint64_is_refused_and_changes_nothing(tmp_path):
    async with open_journal(tmp_path / "journal.db") as journal:
        first = Sample(ENGINE_PROXY, "1", (), {up(0): 5}, {})
        await journal.commit_sample(first, sampled_at_ms=1)
        huge = Sample(ENGINE_PROXY, "1", (), {up(0): 1 << 64}, {})
        with pytest.raises(CounterError, match="not a uint64"):
            await journal.commit_sample(huge, sampled_at_ms=2)
        assert await journal.baselines(ENGINE_PROXY, "1") == {up(0): 5}


async def test_idle_round_writes_nothing(tmp_path):
    path = tmp_path / "journal.db"
    readings = {up(0): 5, down(0): 9}
    async with open_journal(path) as journal:

        async def commit(at: int) -> tuple[int, int]:
            baselines = await journal.baselines(ENGINE_PROXY, "1")
            sample = compute_deltas(
                baselines, readings, engine=ENGINE_PROXY, epoch="1", resolve=RESOLVE
            )
            return await journal.commit_sample(sample, sampled_at_ms=at)

        assert await commit(1) == (1, 1)
        watcher = sqlite3.connect(path)
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        assert await commit(2) == (0, 0)  # nothing moved
        # data_version changes when another connection commits a change
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == version
        watcher.close()
        assert await journal.baselines(ENGINE_PROXY, "1") == readings


async def test_a_round_over_the_same_counters_rewrites_only_their_counts(tmp_path):
    """The counters' ids stay as stored while the names do not change, whatever
    order the core reports them in; counts follow the stored order; a new
    counter (or a new epoch) writes the ids again. Every state reopens exactly."""
    path = tmp_path / "journal.db"

    def stored_row() -> tuple[bytes, bytes]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(
                "SELECT counter_ids, counts FROM baseline_sets WHERE engine = 'proxy'"
            ).fetchone()
        finally:
            conn.close()

    async def commit(journal: Journal, readings: dict[str, int], at: int, epoch: str = "1"):
        sample = compute_deltas(
            await journal.baselines(ENGINE_PROXY, epoch),
            readings,
            engine=ENGINE_PROXY,
            epoch=epoch,
            resolve=RESOLVE,
        )
        await journal.commit_sample(sample, sampled_at_ms=at)

    first = {up(i): 100 + i for i in range(5)} | {down(i): 900 + i for i in range(5)}
    async with open_journal(path) as journal:
        await commit(journal, first, 1)
        ids, counts = stored_row()
        # the same names, reported in reverse, all moved
        second = {name: value + 7 for name, value in reversed(first.items())}
        await commit(journal, second, 2)
        assert stored_row()[0] == ids and stored_row()[1] != counts
        assert await journal.baselines(ENGINE_PROXY, "1") == second
    async with open_journal(path) as journal:
        assert await journal.baselines(ENGINE_PROXY, "1") == second
        third = {**second, up(9): 4}  # a counter appears: the ids are written again
        await commit(journal, third, 3)
        assert stored_row()[0] != ids
        fourth = {name: value + 1 for name, value in third.items()}
        await commit(journal, fourth, 4)
        assert await journal.baselines(ENGINE_PROXY, "1") == fourth
        ids = stored_row()[0]
        # as many counters, but one replaced by another: the ids are written again
        fifth = {name: value + 1 for name, value in fourth.items() if name != up(0)}
        fifth[up(8)] = 6
        assert len(fifth) == len(fourth)
        await commit(journal, fifth, 5)
        assert stored_row()[0] != ids
        assert await journal.baselines(ENGINE_PROXY, "1") == fifth
    async with open_journal(path) as journal:
        assert await journal.baselines(ENGINE_PROXY, "1") == fifth
        totals = await journal.outbox_totals()
        assert totals[("user-0", ENGINE_PROXY, "1")] == (100 + 7 + 1, 900 + 7 + 1 + 1)
        assert totals[("user-9", ENGINE_PROXY, "1")] == (4 + 1 + 1, 0)
        assert totals[("user-8", ENGINE_PROXY, "1")] == (6, 0)
