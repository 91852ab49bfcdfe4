"""The journal file itself: damaged or foreign files, migrations, a full disk."""

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
from edgeward.agent.journal import (
    SCHEMA_VERSION,
    Journal,
    JournalError,
    JournalFullError,
    open_journal,
)
from tests.support.old_journal import build_old_journal

USERS = 400
RESOLVE = proxy_resolver({f"u{i}@x": f"user-{i}" for i in range(USERS)})


def readings(step: int) -> dict[str, int]:
    out = {}
    for i in range(USERS):
        out[proxy_counter(f"u{i}@x", UPLINK)] = step * (i + 1) * 100
        out[proxy_counter(f"u{i}@x", DOWNLINK)] = step * (i + 1) * 300
    return out


async def sample_at(journal: Journal, step: int):
    baselines = await journal.baselines(ENGINE_PROXY, "1")
    return compute_deltas(
        baselines, readings(step), engine=ENGINE_PROXY, epoch="1", resolve=RESOLVE
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def make_journal(path: Path, steps: int = 2) -> None:
    async with open_journal(path) as journal:
        for step in range(1, steps + 1):
            await journal.commit_sample(await sample_at(journal, step), sampled_at_ms=step)


def page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------- refusing bad files


def _not_sqlite(path: Path) -> None:
    path.write_text("users:\n  - alice\n" * 50)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated_mid_page(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def _truncated_at_page(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2 * page_size(path)])


def _scribbled(path: Path) -> None:
    # overwrite the middle pages with garbage, keep the size and the header
    data = bytearray(path.read_bytes())
    size = page_size(path)
    for page in range(2, len(data) // size - 1):
        data[page * size + 10 : page * size + 200] = b"\xa5" * 190
    path.write_bytes(bytes(data))


def _newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()


def _foreign_sqlite(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('alice')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_not_sqlite, "not a SQLite database (bad header)"),
        (_empty, "file is empty (0 bytes); refusing to start over it"),
        (_truncated_mid_page, "damaged: database disk image is malformed"),
        (_truncated_at_page, "damaged: "),
        (_scribbled, "damaged: "),
        (
            _newer_schema,
            f"schema version {SCHEMA_VERSION + 5} is newer than this agent knows "
            f"({SCHEMA_VERSION})",
        ),
        (_foreign_sqlite, "not an edgeward journal (application_id 0x0)"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
async def test_unusable_journal_is_a_clear_error_and_left_untouched(tmp_path, damage, reason):
    path = tmp_path / "journal.db"
    await make_journal(path)
    damage(path)
    before = digest(path)
    with pytest.raises(JournalError) as info:
        await Journal.open(path)
    message = str(info.value)
    assert message.startswith(f"journal {path}: ")
    assert reason in message
    assert info.value.path == path
    assert digest(path) == before  # never repaired, replaced or migrated
    # and it stays refused: a second start does not "fix" it either
    with pytest.raises(JournalError):
        await Journal.open(path)
    assert digest(path) == before


async def test_directory_or_missing_parent_is_a_clear_error(tmp_path):
    with pytest.raises(JournalError, match="is a directory, not a journal file"):
        await Journal.open(tmp_path)
    missing = tmp_path / "nope" / "journal.db"
    with pytest.raises(JournalError, match=f"directory {missing.parent} does not exist"):
        await Journal.open(missing)
    assert not missing.parent.exists()


async def test_leftover_of_an_interrupted_creation_is_rebuilt(tmp_path):
    path = tmp_path / "journal.db"
    (tmp_path / "journal.db.creating").write_bytes(b"half a file")
    async with open_journal(path) as journal:
        assert await journal.pending(0, 1) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db"]


# ---------------------------------------------------------------- migrations


def build_v1(path: Path) -> None:
    """A journal as the first schema version wrote it, with data in it."""
    build_old_journal(
        path,
        1,
        """
        BEGIN;
        UPDATE seqs SET high = 7, acked = 5, handed_out = 6;
        INSERT INTO epochs VALUES ('proxy', '3', 1000, 'core-start=990');
        INSERT INTO counters VALUES (1, 'proxy', 'user>>>a@x>>>traffic>>>uplink');
        INSERT INTO counters VALUES (2, 'proxy', 'user>>>b@x>>>traffic>>>uplink');
        INSERT INTO baselines VALUES (1, '3', 900);
        INSERT INTO baselines VALUES (2, '2', 5);
        INSERT INTO streams VALUES (1, 'user-a', 'proxy', '3');
        INSERT INTO outbox VALUES (6, 1, 100, 200, 11), (7, 1, 50, 0, 12);
        INSERT INTO desired VALUES (1, 12, x'0802');
        COMMIT;
        """,
    )


async def test_upgrade_from_schema_1_keeps_everything(tmp_path):
    path = tmp_path / "journal.db"
    build_v1(path)
    async with open_journal(path) as journal:
        assert await journal.current_epoch(ENGINE_PROXY) == "3"
        assert await journal.epoch_marker(ENGINE_PROXY) == "core-start=990"
        assert await journal.baselines(ENGINE_PROXY, "3") == {"user>>>a@x>>>traffic>>>uplink": 900}
        rows = await journal.pending(5, 10)
        assert [(r.seq, r.user_id, r.uplink, r.downlink) for r in rows] == [
            (6, "user-a", 100, 200),
            (7, "user-a", 50, 0),
        ]
        stored = await journal.desired()  # schema 1's whole snapshot, kept for the node
        assert (stored.revision, stored.users, stored.legacy_snapshot) == (12, {}, b"\x08\x02")
        stats = await journal.outbox_stats()
        assert (stats.high_seq, stats.acked_seq) == (7, 5)
        # the tables of schemas 2 and 3 work
        assert await journal.grant_leases([("user-a", 1, 10)]) == 1
        await journal.change_desired(13, {"user-a": b"\x0a\x01a"}, ())
        assert (await journal.desired()).users == {"user-a": b"\x0a\x01a"}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    conn.close()


async def test_failed_migration_rolls_back_to_the_old_version(tmp_path, monkeypatch):
    path = tmp_path / "journal.db"
    await make_journal(path, steps=1)
    broken = "CREATE TABLE extra (a INTEGER);\nCREATE TABLE seqs (b INTEGER);\n"
    monkeypatch.setattr(journal_schema, "MIGRATIONS", [*journal_schema.MIGRATIONS, broken])
    with pytest.raises(
        JournalError,
        match=f"migration to schema {SCHEMA_VERSION + 1} failed: table seqs already exists",
    ):
        await Journal.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "extra" not in tables


# ---------------------------------------------------------------- full disk


async def test_full_disk_fails_the_commit_and_keeps_the_previous_state(tmp_path):
    path = tmp_path / "journal.db"
    async with open_journal(path) as journal:
        await journal.commit_sample(await sample_at(journal, 1), sampled_at_ms=1)
        stats = await journal.outbox_stats()
        baselines = await journal.baselines(ENGINE_PROXY, "1")
        totals = await journal.outbox_totals()

        # A real SQLITE_FULL from the real SQLite: cap the file at its size now.
        conn = journal._store._conn  # the test reaches in to set the cap
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        sample = await sample_at(journal, 2)
        with pytest.raises(JournalFullError) as info:
            await journal.commit_sample(sample, sampled_at_ms=2)
        assert str(info.value).startswith(f"journal {path}: disk or size limit full")
        assert "database or disk is full" in str(info.value)

        assert await journal.outbox_stats() == stats
        assert await journal.baselines(ENGINE_PROXY, "1") == baselines
        assert await journal.outbox_totals() == totals
        # the next sample recomputes exactly the deltas that failed
        assert await sample_at(journal, 2) == sample

        conn.execute("PRAGMA max_page_count = 1073741823")
        first, last = await journal.commit_sample(sample, sampled_at_ms=2)
        assert (first, last) == (stats.high_seq + 1, stats.high_seq + USERS)

    # on disk too: exactly two samples, nothing of the failed attempt
    async with open_journal(path) as journal:
        totals = await journal.outbox_totals()
        assert totals[("user-9", ENGINE_PROXY, "1")] == (2 * 10 * 100, 2 * 10 * 300)
        assert (await journal.outbox_stats()).rows == 2 * USERS
