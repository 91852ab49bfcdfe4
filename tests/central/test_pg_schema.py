"""central's migrations on a real PostgreSQL cluster: the same list as on SQLite."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from edgeward.central import pg_schema, schema


def test_translation_refuses_sqlite_only_sql_it_does_not_know():
    with pytest.raises(pg_schema.UntranslatedStatement, match="no PostgreSQL translation"):
        pg_schema.translate("CREATE TRIGGER other BEFORE UPDATE ON x BEGIN SELECT 1; END")
    assert pg_schema.translate("CREATE TABLE t (a TEXT PRIMARY KEY) WITHOUT ROWID") == [
        "CREATE TABLE t (a TEXT PRIMARY KEY)"
    ]


def test_replicas_migrating_at_once_end_at_the_latest_version_once(postgres_dsn: str):
    async def main():
        conns = [await asyncpg.connect(postgres_dsn) for _ in range(3)]
        try:
            starts = await asyncio.wait_for(
                asyncio.gather(*(pg_schema.migrate(c) for c in conns)), 60
            )
            again = await pg_schema.migrate(conns[0])
            versions = [r[0] for r in await conns[0].fetch("SELECT version FROM schema_version")]
            await conns[0].execute(
                "INSERT INTO audit_log (at_ms, actor, action, subject, reason)"
                " VALUES (1, 'a', 'b', 'c', 'd')"
            )
            errors = []
            for statement in ("UPDATE audit_log SET reason = 'x'", "DELETE FROM audit_log"):
                with pytest.raises(asyncpg.RaiseError) as caught:
                    await conns[0].execute(statement)
                errors.append(str(caught.value))
            kept = await conns[0].fetchval("SELECT reason FROM audit_log")
        finally:
            for c in conns:
                await c.close()
        return starts, again, versions, errors, kept

    starts, again, versions, errors, kept = asyncio.run(main())
    assert sorted(starts) == [0, 0, 0]  # each saw an empty database when it started
    assert again == schema.LATEST_VERSION
    assert versions == list(range(1, schema.LATEST_VERSION + 1))  # each migration once
    assert errors == ["audit_log is append-only"] * 2
    assert kept == "d"


def test_the_location_chooses_the_backend(tmp_path, postgres_dsn: str):
    from edgeward.central.open_storage import open_storage
    from edgeward.central.pg_storage import PgStorage
    from edgeward.central.storage import SqliteStorage

    async def main():
        on_pg = await open_storage(postgres_dsn)
        on_file = await open_storage(tmp_path / "c.sqlite")
        kinds = type(on_pg), type(on_file)
        await on_pg.close()
        await on_file.close()
        return kinds

    assert asyncio.run(main()) == (PgStorage, SqliteStorage)
