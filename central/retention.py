"""How long central keeps usage history, and the periodic pass that applies it.

Kept: every user's and node's totals (users, nodes tables) forever; retention
never lowers a total or a quota. Pruned:
- hourly rollups (`usage_hourly`) of whole calendar months (UTC) older than
  `[retention] rollup_months`: on PostgreSQL, where usage_hourly is partitioned
  by month, by dropping the month's partition; on SQLite by deleting its rows;
- raw deltas (the ledger) older than `[retention] delta_days`; each node's
  ledger floor keeps what exactly-once needs (Storage.prune_ledger).

The month arithmetic is pure (UTC, epoch milliseconds) and shared by both
backends; `retention_pass` is the thin driver the server's ticker runs.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .records import now_ms

log = logging.getLogger("edgeward.central.retention")

DAY_MS = 86_400_000
# How often the retention ticker runs: months change slowly; an hour is plenty to
# create next month's partition well before it starts and to drop old ones.
RETENTION_INTERVAL_SECONDS = 3600.0
# Months with a partition of their own: the range PostgreSQL and Python both handle
# (a node's odd timestamp outside it stays in the DEFAULT partition).
FIRST_MONTH_MS = 0  # 1970-01
LAST_MONTH_MS = calendar.timegm((9998, 12, 1, 0, 0, 0)) * 1000
PARTITION_PREFIX = "usage_hourly_p"


@dataclass(frozen=True)
class RollupPrune:
    partitions_dropped: int  # whole months dropped (PostgreSQL)
    rows_deleted: int  # rows deleted one by one (SQLite; PostgreSQL's DEFAULT partition)


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass removed."""

    rollups: RollupPrune
    deltas_deleted: int  # raw ledger deltas


def month_start_ms(at_ms: int) -> int:
    """The first millisecond (UTC) of the month holding at_ms."""
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    return calendar.timegm((moment.year, moment.month, 1, 0, 0, 0)) * 1000


def add_months(month_ms: int, months: int) -> int:
    """The start of the month `months` after (negative: before) the month holding month_ms."""
    moment = datetime.fromtimestamp(month_ms / 1000, UTC)
    index = moment.year * 12 + moment.month - 1 + months
    return calendar.timegm((index // 12, index % 12 + 1, 1, 0, 0, 0)) * 1000


def partition_name(month_ms: int) -> str:
    moment = datetime.fromtimestamp(month_ms / 1000, UTC)
    return f"{PARTITION_PREFIX}{moment.year:04d}{moment.month:02d}"


def partition_month(name: str) -> int | None:
    """The month start of a partition named by partition_name(); None for other names."""
    digits = name.removeprefix(PARTITION_PREFIX)
    if digits == name or len(digits) != 6 or not digits.isdigit():
        return None
    year, month = int(digits[:4]), int(digits[4:])
    if not 1 <= month <= 12:
        return None
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def months_ahead(at_ms: int, count: int = 2) -> list[int]:
    """The month holding at_ms and the count-1 following ones: partitions made ahead,
    so ingest never writes into a month whose partition does not exist yet."""
    first = month_start_ms(at_ms)
    return [add_months(first, i) for i in range(count)]


def rollup_cutoff_ms(at_ms: int, keep_months: int) -> int | None:
    """Rollups before this are pruned: keep_months whole months before the current one
    are kept (and the current one). None: keep_months 0, kept forever."""
    if keep_months <= 0:
        return None
    return add_months(month_start_ms(at_ms), -keep_months)


def delta_cutoff_ms(at_ms: int, keep_days: int) -> int | None:
    """Raw deltas from before this are pruned (received before it on SQLite, sampled
    before it on PostgreSQL). None: keep_days 0, kept forever."""
    if keep_days <= 0:
        return None
    return at_ms - keep_days * DAY_MS


def partitions_to_drop(names: list[str], cutoff_ms: int) -> list[str]:
    """Monthly partitions wholly before cutoff_ms (their month ends at or before it)."""
    old = []
    for name in names:
        month = partition_month(name)
        if month is not None and add_months(month, 1) <= cutoff_ms:
            old.append(name)
    return sorted(old)


async def retention_pass(
    storage: Any, rollup_months: int, delta_days: int, at_ms: int | None = None
) -> RetentionResult:
    """Prune rollups and raw deltas, then make partitions ahead (in that order: late
    rows of a pruned month in DEFAULT are deleted, not given a partition that the
    next pass would drop)."""
    at = now_ms() if at_ms is None else at_ms
    pruned = RollupPrune(0, 0)
    cutoff = rollup_cutoff_ms(at, rollup_months)
    if cutoff is not None:
        pruned = await storage.prune_rollups(cutoff)
    deltas_deleted = 0
    deltas_before = delta_cutoff_ms(at, delta_days)
    if deltas_before is not None:
        deltas_deleted = await storage.prune_ledger(deltas_before)
    await storage.prepare_rollups(at)
    return RetentionResult(pruned, deltas_deleted)


async def prepare_at_start(storage: Any) -> None:
    """This and next month's partitions before central takes streams. A failure is
    logged, not fatal: ingest still lands in the DEFAULT partition, the ticker retries."""
    try:
        await storage.prepare_rollups(now_ms())
    except Exception:
        log.exception("making the rollups' partitions failed")


async def retention_ticker(
    storage: Any,
    rollup_months: int,
    delta_days: int,
    interval: float = RETENTION_INTERVAL_SECONDS,
) -> None:
    """A retention_pass every interval, the first one interval after start (a central
    restarting often does not prune at each start; prepare_at_start ran already). A
    failed pass is retried on the next tick."""
    while True:
        await asyncio.sleep(interval)
        try:
            result = await retention_pass(storage, rollup_months, delta_days)
        except Exception:
            log.exception("retention pass failed")
        else:
            pruned = result.rollups
            if pruned.partitions_dropped or pruned.rows_deleted or result.deltas_deleted:
                log.info(
                    "retention: dropped %d monthly partition(s), deleted %d rollup row(s)"
                    " and %d raw delta(s)",
                    pruned.partitions_dropped,
                    pruned.rows_deleted,
                    result.deltas_deleted,
                )
