"""The journal's SQLite schema, its migrations, and opening the file safely.

A journal file is only ever created by us, atomically (built beside the target
and renamed into place), so an existing file at the journal path must be a
readable edgeward journal. Anything else (not SQLite, truncated, damaged, of a
newer schema, another program's database) is a startup error that names the
path and the reason and leaves the file exactly as it was: replacing it would
silently forget unsent traffic and the counter baselines.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

# SQLite folds the WAL back into the file inside the COMMIT that crosses this
# many pages. The agent checkpoints after each sampling round instead
# (Journal.checkpoint), so no round's commit pays for it (~6 ms at 10,000
# users); this is only the backstop should that stop happening (32 MB).
WAL_BACKSTOP_PAGES = 8192

# 'EWJ1': marks an edgeward agent journal (PRAGMA application_id).
APPLICATION_ID = 0x45574A31
SQLITE_MAGIC = b"SQLite format 3\x00"


def pack_ids(ids: Iterable[int]) -> bytes:
    """Counter ids as little-endian int64s (a baseline set's counter_ids)."""
    packed = array("q", ids)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def pack_counts(counts: Iterable[int]) -> bytes:
    """Byte counts as little-endian uint64s (a baseline set's counts); a value
    that is not a uint64 raises OverflowError or TypeError."""
    packed = array("Q", counts)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack(blob: bytes, typecode: str) -> list[int]:
    """The inverse of pack_ids ("q") / pack_counts ("Q"); ValueError if torn."""
    values = array(typecode)
    values.frombytes(blob)  # ValueError unless a whole number of items
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def _baselines_into_sets(conn: sqlite3.Connection) -> None:
    """Schema 4: each engine's baselines become one row of two packed arrays
    instead of one row per counter. At 10,000 users a sample rewrote 20,000
    baseline rows (~40 ms with building them); one row of two ~160 KB blobs
    costs ~5 ms. Counter names stay interned in `counters`. Only the current
    epoch's baselines existed (a new epoch deleted the old ones); any others
    would be ignored on load, so they are not carried."""
    conn.execute(
        "CREATE TABLE baseline_sets ("
        " engine TEXT PRIMARY KEY,"
        " epoch TEXT NOT NULL,"
        " counter_ids BLOB NOT NULL,"  # pack_ids: ids into counters
        " counts BLOB NOT NULL"  # pack_counts: the last reading of each, same order; > 0
        ") WITHOUT ROWID"
    )
    sets: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for engine, epoch, counter, value in conn.execute(
        "SELECT c.engine, b.epoch, b.counter, b.value FROM baselines b "
        "JOIN counters c ON c.id = b.counter "
        "JOIN epochs e ON e.engine = c.engine AND e.epoch = b.epoch ORDER BY b.counter"
    ):
        ids, counts = sets.setdefault((engine, epoch), ([], []))
        ids.append(counter)
        counts.append(value)
    conn.executemany(
        "INSERT INTO baseline_sets (engine, epoch, counter_ids, counts) VALUES (?, ?, ?, ?)",
        [(e, ep, pack_ids(ids), pack_counts(c)) for (e, ep), (ids, c) in sets.items()],
    )
    conn.execute("DROP TABLE baselines")


# One outbox row per sample (schema 5): its deltas' seqs are first_seq,
# first_seq + 1, ... last_seq; their streams, uplinks and downlinks are packed
# columns in that order. uplink/downlink: the columns' sums, so the outbox's
# size and bytes are read without unpacking it.
OUTBOX_SETS = """
    CREATE TABLE outbox_sets (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq),
        sampled_at_ms INTEGER NOT NULL,
        streams BLOB NOT NULL,        -- pack_ids: ids into streams
        uplinks BLOB NOT NULL,        -- pack_counts
        downlinks BLOB NOT NULL,      -- pack_counts
        uplink INTEGER NOT NULL,
        downlink INTEGER NOT NULL
    )
"""

# (seq, stream id, uplink, downlink, sampled_at_ms)
OutboxRow = tuple[int, int, int, int, int]


def outbox_runs(rows: Iterable[OutboxRow]) -> list[list[OutboxRow]]:
    """Rows (in seq order) cut where the seqs stop being consecutive or the
    sample time changes: each run is one outbox_sets row."""
    runs: list[list[OutboxRow]] = []
    for row in rows:
        if runs and row[0] == runs[-1][-1][0] + 1 and row[4] == runs[-1][-1][4]:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def insert_outbox_set(
    conn: sqlite3.Connection,
    first_seq: int,
    sampled_at_ms: int,
    streams: list[int],
    uplinks: list[int],
    downlinks: list[int],
) -> None:
    """One outbox_sets row; OverflowError/TypeError for a count that is not a uint64."""
    conn.execute(
        "INSERT INTO outbox_sets (first_seq, last_seq, sampled_at_ms, streams, uplinks, "
        "downlinks, uplink, downlink) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            first_seq,
            first_seq + len(streams) - 1,
            sampled_at_ms,
            pack_ids(streams),
            pack_counts(uplinks),
            pack_counts(downlinks),
            sum(uplinks),
            sum(downlinks),
        ),
    )


def insert_outbox_runs(conn: sqlite3.Connection, rows: Iterable[OutboxRow]) -> None:
    for run in outbox_runs(rows):
        _, streams, ups, downs, _ = map(list, zip(*run, strict=True))
        insert_outbox_set(conn, run[0][0], run[0][4], streams, ups, downs)


def _outbox_into_sets(conn: sqlite3.Connection) -> None:
    """Schema 5: the outbox becomes one row per sample (outbox_sets) instead of
    one per delta. Inserting 10,000 rows and their index entries was a third of
    a sampling cycle at 10,000 users; one row of three packed columns is ~1 ms.
    Rows central already acknowledged are deleted with the ack, so none should
    be left; any would not be sent again, so they are not carried."""
    conn.execute(OUTBOX_SETS)
    (acked,) = conn.execute("SELECT acked FROM seqs").fetchone()
    rows = conn.execute(
        "SELECT seq, stream, uplink, downlink, sampled_at_ms FROM outbox WHERE seq > ? "
        "ORDER BY seq",
        (acked,),
    ).fetchall()
    insert_outbox_runs(conn, rows)
    conn.execute("DROP TABLE outbox")


Migration = str | Callable[[sqlite3.Connection], None]

# One entry per schema version: MIGRATIONS[i] takes user_version i to i + 1
# (SQL text, or a function for a step SQL cannot express). Append only; never
# edit a step that has shipped.
MIGRATIONS: list[Migration] = [
    # 1: desired/applied state, epochs, counter baselines, the usage outbox.
    f"""
    PRAGMA application_id = {APPLICATION_ID};
    CREATE TABLE seqs (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        high INTEGER NOT NULL,        -- highest seq ever given out; never goes down
        acked INTEGER NOT NULL,       -- highest seq central acknowledged
        handed_out INTEGER NOT NULL   -- highest seq pending() returned (maybe sent)
    );
    INSERT INTO seqs (id, high, acked, handed_out) VALUES (1, 0, 0, 0);
    CREATE TABLE desired (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        snapshot BLOB NOT NULL        -- serialized edgeward.v1.DesiredSnapshot
    );
    CREATE TABLE applied (
        engine TEXT NOT NULL,
        user_id TEXT NOT NULL,
        state TEXT NOT NULL,          -- JSON, owned by the engine's driver
        PRIMARY KEY (engine, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE epochs (
        engine TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        marker TEXT NOT NULL DEFAULT ''  -- the driver's restart evidence
    ) WITHOUT ROWID;
    -- Counter names interned: baselines are rewritten every sample, and
    -- short rows keep that write small (about 1/3 of spelled-out names).
    CREATE TABLE counters (
        id INTEGER PRIMARY KEY,
        engine TEXT NOT NULL,
        name TEXT NOT NULL,
        UNIQUE (engine, name)
    );
    -- Only the current epoch's baselines are kept; absent means 0.
    CREATE TABLE baselines (
        counter INTEGER PRIMARY KEY REFERENCES counters (id),
        epoch TEXT NOT NULL,
        value INTEGER NOT NULL CHECK (value > 0)
    );
    -- (user, engine, epoch) interned: outbox rows stay ~20 bytes.
    CREATE TABLE streams (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        engine TEXT NOT NULL,
        epoch TEXT NOT NULL,
        UNIQUE (user_id, engine, epoch)
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        stream INTEGER NOT NULL,
        uplink INTEGER NOT NULL CHECK (uplink >= 0),
        downlink INTEGER NOT NULL CHECK (downlink >= 0),
        sampled_at_ms INTEGER NOT NULL
    );
    """,
    # 2: local enforcement, quota leases, decisions not yet reported.
    """
    CREATE TABLE enforcement (
        user_id TEXT PRIMARY KEY,
        suspended INTEGER NOT NULL CHECK (suspended IN (0, 1)),
        reason INTEGER NOT NULL,      -- edgeward.v1.Reason
        decided_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        user_id TEXT PRIMARY KEY,
        lease_id INTEGER NOT NULL,
        granted INTEGER NOT NULL CHECK (granted >= 0),
        used INTEGER NOT NULL CHECK (used >= 0)
    ) WITHOUT ROWID;
    CREATE TABLE local_decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        action INTEGER NOT NULL,      -- edgeward.v1.Action
        reason INTEGER NOT NULL,      -- edgeward.v1.Reason
        decided_at_ms INTEGER NOT NULL
    );
    """,
    # 3: the desired state one row per user, so a change of one user writes one row
    # (a whole-snapshot blob per change cost ~250 ms at 3,000 users). desired.snapshot
    # stays for journals written before: the agent moves it into rows on load.
    """
    CREATE TABLE desired_users (
        user_id TEXT PRIMARY KEY,
        spec BLOB NOT NULL            -- serialized edgeward.v1.UserSpec
    ) WITHOUT ROWID;
    """,
    # 4: baselines as one packed row per engine (baseline_sets).
    _baselines_into_sets,
    # 5: the outbox as one packed row per sample (outbox_sets).
    _outbox_into_sets,
]
SCHEMA_VERSION = len(MIGRATIONS)


class JournalError(Exception):
    """The journal cannot be used; names the file and says why."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        super().__init__(f"journal {os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


class JournalFullError(JournalError):
    """A write failed for lack of space; the transaction was rolled back."""


def connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE / COMMIT).
    # check_same_thread=False: trio.to_thread may use any worker thread, and
    # the Journal's lock makes sure only one uses the connection at a time.
    return sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)


def migrate(conn: sqlite3.Connection, path: Path, target: int | None = None) -> None:
    """Run the missing migration steps (up to ``target``, default all), each in
    its own transaction with its user_version bump: a crash leaves a whole
    version or none."""
    target = len(MIGRATIONS) if target is None else target
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for step in range(version, target):
        try:
            conn.execute("BEGIN IMMEDIATE")
            migration = MIGRATIONS[step]
            if callable(migration):
                migration(conn)
            else:
                for statement in _statements(migration):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise JournalError(path, f"migration to schema {step + 1} failed: {exc}") from exc


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT on its own; split so the step stays one
    # transaction. complete_statement() knows about comments and literals.
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        not ln.strip() or ln.strip().startswith("--") for ln in buffer.splitlines()
    ):
        raise ValueError(f"unterminated SQL in migration: {buffer.strip()[:80]!r}")
    return statements


def open_connection(path: os.PathLike[str] | str) -> sqlite3.Connection:
    """Open (or create) the journal at ``path`` and bring its schema up to date."""
    path = Path(path)
    if path.is_dir():
        raise JournalError(path, "is a directory, not a journal file")
    if not path.parent.is_dir():
        raise JournalError(path, f"directory {path.parent} does not exist")
    if not path.exists():
        _create(path)
    _check_header(path)
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise JournalError(path, f"cannot open: {exc}") from exc
    try:
        _check_contents(conn, path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(path, f"cannot switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
        migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise JournalError(path, f"{_describe(exc)}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    return "damaged" if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") else "unreadable"


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise JournalError(path, f"cannot read: {exc}") from exc
    if not head:
        raise JournalError(path, "file is empty (0 bytes); refusing to start over it")
    if head != SQLITE_MAGIC:
        raise JournalError(path, "not a SQLite database (bad header)")


def _check_contents(conn: sqlite3.Connection, path: Path) -> None:
    # Only reads here: nothing may be written before the file is known good.
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    known = len(MIGRATIONS)
    if version > known:
        raise JournalError(
            path,
            f"schema version {version} is newer than this agent knows ({known}); "
            "run a newer agent or restore a matching journal",
        )
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise JournalError(path, f"not an edgeward journal (application_id {app_id:#x})")
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise JournalError(path, "damaged: " + "; ".join(problems))


def _create(path: Path) -> None:
    """Build a fresh journal beside ``path`` and rename it into place, so a
    crash never leaves a half-made file at the journal path."""
    building = path.with_name(path.name + ".creating")
    for leftover in (building, *_sidecars(building)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()  # our own half-built file from a crash
    try:
        conn = connect(building)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            migrate(conn, building)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        for sidecar in _sidecars(building):
            with contextlib.suppress(FileNotFoundError):
                sidecar.unlink()
        _fsync(building)
        os.rename(building, path)
        _fsync(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(path, f"cannot create: {exc}") from exc


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
