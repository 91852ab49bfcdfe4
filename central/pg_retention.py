"""Monthly partitions of usage_hourly on PostgreSQL: made ahead, old ones dropped whole.

usage_hourly is `PARTITION BY RANGE (hour_ms)` with one partition per calendar
month (UTC, named usage_hourly_pYYYYMM) and a DEFAULT partition for any hour
without one, so an ingest never fails on a timestamp (a failed ingest would
stall the node). prepare_rollups makes the current and next months' partitions
and moves any month found in DEFAULT into a partition of its own; prune_rollups
drops the months wholly before the cutoff (cheap: no row is visited).

A partition is made as a plain table, filled with its month's rows from
DEFAULT, then attached, with ingest's writes to usage_hourly held off for those
few milliseconds (an INSERT routed to DEFAULT while an ATTACH commits would fail
the new bounds: a failed ingest would stall its node); readers go on. Dropping
old months holds everything off for the DROP. Replicas do this one after the
other (an advisory lock); `lock_timeout` bounds how long a maintenance step
waits behind ingest (it is retried on the next pass).
"""

from __future__ import annotations

import calendar
from typing import Any

from . import retention
from .retention import RollupPrune

PARTITIONS_LOCK = 0x6564_677B  # pg_advisory_xact_lock key of partition maintenance
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
BLOCK_WRITERS = "LOCK TABLE usage_hourly IN SHARE ROW EXCLUSIVE MODE"  # readers go on
BLOCK_ALL = "LOCK TABLE usage_hourly IN ACCESS EXCLUSIVE MODE"
LIST_PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'usage_hourly'::regclass"
)
# Months with rows in DEFAULT (only those a monthly partition can hold).
DEFAULT_MONTHS = (
    "SELECT DISTINCT date_trunc('month', to_timestamp(hour_ms / 1000.0) AT TIME ZONE 'UTC')"
    " FROM usage_hourly_default WHERE hour_ms >= $1 AND hour_ms < $2"
)
MOVE_FROM_DEFAULT = (
    "WITH moved AS (DELETE FROM usage_hourly_default WHERE hour_ms >= $1 AND hour_ms < $2"
    " RETURNING user_id, node_id, engine, hour_ms, uplink_bytes, downlink_bytes)"
    " INSERT INTO {name} SELECT * FROM moved"
)
# Rows not in a dropped month: DEFAULT's, or a cutoff inside a month (pruning skips
# every partition wholly after the cutoff).
DELETE_BEFORE = "DELETE FROM usage_hourly WHERE hour_ms < $1"


async def list_partitions(conn: Any) -> list[str]:
    return sorted(row[0] for row in await conn.fetch(LIST_PARTITIONS))


async def make_partition(conn: Any, month_ms: int) -> bool:
    """The month's partition, with its rows from DEFAULT; False if it already existed.
    Runs in its own transaction."""
    name = retention.partition_name(month_ms)
    end = retention.add_months(month_ms, 1)
    async with conn.transaction():
        await conn.execute(LOCK_TIMEOUT)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITIONS_LOCK)
        if name in await list_partitions(conn):  # another replica made it
            return False
        # Writers wait (a few ms: DEFAULT is small) rather than race the ATTACH: an
        # INSERT routed to DEFAULT before the ATTACH commits would fail its new bounds.
        await conn.execute(BLOCK_WRITERS)
        await conn.execute(f"CREATE TABLE {name} (LIKE usage_hourly INCLUDING ALL)")
        await conn.execute(MOVE_FROM_DEFAULT.format(name=name), month_ms, end)
        await conn.execute(
            f"ALTER TABLE usage_hourly ATTACH PARTITION {name}"
            f" FOR VALUES FROM ({month_ms}) TO ({end})"
        )
    return True


class PgRetentionMixin:
    """prepare_rollups() and prune_rollups() of PgStorage (see the module docstring)."""

    _lock: Any
    _conn: Any

    async def prepare_rollups(self, at_ms: int) -> list[str]:
        """Partitions for at_ms's month, the next, and every month found in DEFAULT;
        returns the names of those made."""
        async with self._lock:
            rows = await self._conn.fetch(
                DEFAULT_MONTHS, retention.FIRST_MONTH_MS, retention.LAST_MONTH_MS
            )
            months = {calendar.timegm(row[0].timetuple()) * 1000 for row in rows}
            months.update(retention.months_ahead(at_ms))
            existing = set(await list_partitions(self._conn))
            made = []
            for month in sorted(months):
                name = retention.partition_name(month)
                if name not in existing and await make_partition(self._conn, month):
                    made.append(name)
            return made

    async def prune_rollups(self, before_ms: int) -> RollupPrune:
        """Drop the monthly partitions wholly before before_ms, delete older rows left
        elsewhere (DEFAULT). Users' and nodes' totals are not touched."""
        async with self._lock, self._conn.transaction():
            await self._conn.execute(LOCK_TIMEOUT)
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITIONS_LOCK)
            old = retention.partitions_to_drop(await list_partitions(self._conn), before_ms)
            # One lock order for all: the parent first (DROP needs it exclusively; the
            # DELETE would otherwise race ingest's upserts of the same rows in DEFAULT).
            await self._conn.execute(BLOCK_ALL if old else BLOCK_WRITERS)
            for name in old:
                await self._conn.execute(f"DROP TABLE {name}")
            status = await self._conn.execute(DELETE_BEFORE, before_ms)
        return RollupPrune(len(old), int(status.split()[-1]))
