"""Running central's SQL on PostgreSQL: the dialect in one place.

The storage modules write SQL that SQLite and PostgreSQL both accept, except
for a few spellings translated here once per statement (cached):

  ?                         -> $1, $2, ...
  json_each(?)              -> json_array_elements_text($n::json)  (its column is `value` too)
  group_concat(x, ',')      -> string_agg(x, ',')
  max(0, x)  (two-argument) -> GREATEST(0, x)
  INSERT OR IGNORE INTO ... -> INSERT INTO ... ON CONFLICT DO NOTHING

`PgConnection` gives an asyncpg connection the small aiosqlite surface the
storage mixins use (`execute` as awaitable or `async with ... as cursor`,
`execute_fetchall`, `executemany`), so the same mixins run on both backends.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

_PLACEHOLDER_OR_QUOTED = re.compile(r"'(?:[^']|'')*'|\?")
_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO\b", re.I)
_MAX_ZERO = re.compile(r"\bmax\(\s*0\s*,", re.I)


@functools.lru_cache(maxsize=1024)
def to_postgresql(sql: str) -> str:
    sql = re.sub(r"\bjson_each\(\?\)", "json_array_elements_text(?::json)", sql)
    sql = re.sub(r"\bgroup_concat\(", "string_agg(", sql)
    sql = _MAX_ZERO.sub("GREATEST(0,", sql)
    if _OR_IGNORE.match(sql):
        sql = _OR_IGNORE.sub("INSERT INTO", sql) + " ON CONFLICT DO NOTHING"
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)  # a quoted literal: left alone
        count += 1
        return f"${count}"

    return _PLACEHOLDER_OR_QUOTED.sub(number, sql)


class PgCursor:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows
        self._next = 0

    async def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[Any]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows


class _Pending:
    """What execute() returns: await it, or use it as `async with ... as cursor`."""

    def __init__(self, conn: Any, sql: str, params: Sequence[Any]) -> None:
        self._conn, self._sql, self._params = conn, sql, params

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._cursor().__await__()

    async def _cursor(self) -> PgCursor:
        return PgCursor(list(await self._conn.fetch(to_postgresql(self._sql), *self._params)))

    async def __aenter__(self) -> PgCursor:
        return await self._cursor()

    async def __aexit__(self, *exc: object) -> None:
        return None


class PgConnection:
    """An asyncpg connection behind the aiosqlite calls the storage mixins make."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Pending:
        return _Pending(self.raw, sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self.raw.fetch(to_postgresql(sql), *params))

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = list(params)
        if rows:
            await self.raw.executemany(to_postgresql(sql), rows)
