"""central's schema on PostgreSQL: the same numbered migrations as schema.py.

schema.MIGRATIONS stays the one list of migrations; each statement is
translated here for PostgreSQL: SQLite-only table options are dropped, the
AUTOINCREMENT key becomes an identity column, and statements with no
mechanical translation (SQLite triggers) have an explicit PostgreSQL twin in
OVERRIDES. A statement neither translatable nor overridden fails loudly, so a
new SQLite-only migration cannot slip through untested.

Migrations run under a transaction-scoped advisory lock: several central
replicas starting at once migrate one after the other.
"""

from __future__ import annotations

import re
from typing import Any

from . import schema

MIGRATION_LOCK = 0x6564_6777  # "edgw": pg_advisory_xact_lock key

_APPEND_ONLY = """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"""

# usage_hourly partitioned by month (RANGE on hour_ms, which the primary key holds).
# Existing rows move into the DEFAULT partition here; pg_retention.prepare_rollups
# (run at central's start and hourly) moves each month of them into its own partition
# and makes the current and next months' partitions ahead of ingest.
_PARTITION_ROLLUPS = [
    "ALTER TABLE usage_hourly RENAME TO usage_hourly_unpartitioned",
    "ALTER INDEX usage_hourly_pkey RENAME TO usage_hourly_unpartitioned_pkey",
    """CREATE TABLE usage_hourly (
        user_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        engine INTEGER NOT NULL,
        hour_ms BIGINT NOT NULL,
        uplink_bytes BIGINT NOT NULL,
        downlink_bytes BIGINT NOT NULL,
        PRIMARY KEY (user_id, node_id, engine, hour_ms)
    ) PARTITION BY RANGE (hour_ms)""",
    # Catches any hour without a monthly partition: an ingest never fails on a timestamp.
    "CREATE TABLE usage_hourly_default PARTITION OF usage_hourly DEFAULT",
    "INSERT INTO usage_hourly (user_id, node_id, engine, hour_ms, uplink_bytes, downlink_bytes)"
    " SELECT user_id, node_id, engine, hour_ms, uplink_bytes, downlink_bytes"
    " FROM usage_hourly_unpartitioned",
    "DROP TABLE usage_hourly_unpartitioned",
]

# SQLite statement (whitespace-normalized prefix) -> PostgreSQL statements.
OVERRIDES: dict[str, list[str]] = {
    "CREATE INDEX usage_hourly_by_hour": _PARTITION_ROLLUPS,
    "CREATE TRIGGER audit_log_no_update": [
        _APPEND_ONLY,
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    ],
    "CREATE TRIGGER audit_log_no_delete": [
        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    ],
}

_SQLITE_ONLY = re.compile(r"\bWITHOUT ROWID\b|\bAUTOINCREMENT\b|\bTRIGGER\b|\bPRAGMA\b", re.I)


class UntranslatedStatement(RuntimeError):
    """A migration statement uses SQLite-only SQL and has no PostgreSQL override."""


def translate(statement: str) -> list[str]:
    """The PostgreSQL statements for one SQLite migration statement."""
    normalized = " ".join(statement.split())
    for prefix, replacement in OVERRIDES.items():
        if normalized.startswith(prefix):
            return replacement
    pg = re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", statement.strip())
    pg = re.sub(
        r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b",
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        pg,
    )
    if _SQLITE_ONLY.search(pg):
        raise UntranslatedStatement(
            f"no PostgreSQL translation for migration statement: {normalized[:80]}..."
        )
    return [pg]


def migrations() -> list[list[str]]:
    return [[pg for s in migration for pg in translate(s)] for migration in schema.MIGRATIONS]


async def migrate(conn: Any, target: int = schema.LATEST_VERSION) -> int:
    """Bring the database to schema.LATEST_VERSION (tests: an older target); returns
    the version it was at.

    conn: an asyncpg connection. Each migration commits with its version row.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        start = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    if start > schema.LATEST_VERSION:
        raise schema.SchemaTooNew(
            f"database schema version {start} is newer than this edgeward "
            f"(knows up to {schema.LATEST_VERSION}); upgrade edgeward"
        )
    for version, statements in enumerate(migrations()[:target], start=1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if done >= version:  # another replica got there first
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return start
