"""Agent journals as an older schema left them, for migration tests."""

from __future__ import annotations

from pathlib import Path

from edgeward.agent import journal_schema


def build_old_journal(path: Path, schema: int, script: str) -> None:
    """A journal at schema version `schema` (migrated up to it, no further),
    with `script` (SQL, its own BEGIN/COMMIT) run in it."""
    conn = journal_schema.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        journal_schema.migrate(conn, path, target=schema)
        conn.executescript(script)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema
    finally:
        conn.close()
