"""Rollup retention on SQLite: old hours' rows deleted in bounded batches.

SQLite has no partitions: prune_rollups deletes the rows before the cutoff by
range on the hour index (migration 4), DELETE_BATCH rows per transaction so
that ingest interleaves, at most MAX_BATCHES per call (the next pass goes on).
"""

from __future__ import annotations

from typing import Any

from .retention import RollupPrune

DELETE_BATCH = 5000
MAX_BATCHES = 200
DELETE_BEFORE = (
    "DELETE FROM usage_hourly WHERE (user_id, node_id, engine, hour_ms) IN"
    " (SELECT user_id, node_id, engine, hour_ms FROM usage_hourly WHERE hour_ms < ? LIMIT ?)"
)


class RetentionMixin:
    """prepare_rollups() and prune_rollups() of SqliteStorage."""

    _write: Any

    async def prepare_rollups(self, at_ms: int) -> list[str]:
        """Nothing to prepare on SQLite (no partitions); returns the partitions made: none."""
        return []

    async def prune_rollups(self, before_ms: int) -> RollupPrune:
        """Delete the hourly rollups before before_ms. Users' and nodes' totals are not
        touched (they are kept in their own rows)."""
        deleted = 0
        for _ in range(MAX_BATCHES):
            async with self._write() as tx:
                cursor = await tx.db.execute(DELETE_BEFORE, (before_ms, DELETE_BATCH))
                count = cursor.rowcount
                await cursor.close()
            deleted += count
            if count < DELETE_BATCH:
                break
        return RollupPrune(0, deleted)
