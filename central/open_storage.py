"""Opening central's storage from its configured location: a SQLite file path, or a
PostgreSQL URL (`postgresql://user@host:port/database`) for several replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .storage import SqliteStorage, Storage

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRESQL_SCHEMES)


async def open_storage(location: str | Path, **options: Any) -> Storage:
    if is_postgresql(location):
        from .pg_storage import PgStorage  # asyncpg only where PostgreSQL is used

        return await PgStorage.open(str(location), **options)
    return await SqliteStorage.open(location, **options)
