"""Where a storage test's database lives: SQLite file or PostgreSQL database (see conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from edgeward.central.pg_storage import PgStorage
from edgeward.central.storage import SqliteStorage
from tests.central.helpers import dump


class StorageBackend:
    """Where a test's central database lives, on one backend; open() it as often as needed."""

    def __init__(self, name: str, location: Path | str) -> None:
        self.name = name
        self.location = location

    def __repr__(self) -> str:
        return f"StorageBackend({self.name!r}, {str(self.location)!r})"

    async def open(self, **options: Any) -> Any:
        if self.name == "sqlite":
            return await SqliteStorage.open(self.location, **options)
        return await PgStorage.open(str(self.location), **options)

    async def dump(self, skip: tuple[str, ...] = ()) -> str:
        """Every table's rows as text: 'nothing changed' is equality. `skip` leaves out
        tables that legitimately change meanwhile (node_links: a replica's connection
        state, written whenever a stream opens or closes)."""
        if self.name == "sqlite":
            lines = dump(Path(self.location)).splitlines()
            skipped = tuple(f'INSERT INTO "{table}"' for table in skip)
            return "\n".join(line for line in lines if not line.startswith(skipped))
        conn = await asyncpg.connect(str(self.location))
        try:
            # Partitions' rows show under their parent (usage_hourly), whichever
            # monthly partition holds them.
            tables = await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " ORDER BY c.relname"
            )
            lines = []
            for (table,) in tables:
                if table in skip:
                    continue
                rows = await conn.fetch(f'SELECT * FROM "{table}"')
                lines += sorted(f"{table}: {tuple(row)!r}" for row in rows)
            return "\n".join(lines)
        finally:
            await conn.close()
