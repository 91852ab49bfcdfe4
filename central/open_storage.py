"""Opening central's storage from its configured location: a SQLite file path, or a
PostgreSQL URL (`postgresql://user@host:port/database`) for several replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import StorageUnavailable
from .storage import SqliteStorage, Storage

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRESQL_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def open_storage(location: str | Path, **options: Any) -> Storage:
    """options go to the backend's open(); `listen=True` (PostgreSQL only) also hears
    the changes other central replicas make. Raises StorageUnavailable when a
    PostgreSQL server cannot be reached or refuses the connection."""
    if is_postgresql(location):
        import asyncpg  # only where PostgreSQL is used

        from .pg_storage import PgStorage

        try:
            return await PgStorage.open(str(location), **options)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StorageUnavailable(
                f"cannot open the database {redacted(str(location))}: {e or type(e).__name__}"
            ) from None
    options.pop("listen", None)
    return await SqliteStorage.open(location, **options)
