"""Exactly-once usage ingest on SQLite, and the usage reads.

A batch's ledger rows, rollups and totals are written in one transaction
together with the node's acked_seq; the caller acks only after the commit.
The hot part (`apply_usage`) is a plain function over a sqlite3 connection,
run in one hop on the storage thread: one executemany per table, rows summed
in Python first (ingest.aggregate).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from edgeward.proto.usage_codec import UsageDelta

from .ingest import Applied, CountableUser, aggregate, applied, check_batch
from .records import IngestResult, now_ms
from .sqlite_core import run_sync

log = logging.getLogger("edgeward.central.storage")

SELECT_ACKED = "SELECT acked_seq FROM nodes WHERE node_id = ?"
SELECT_SEEN_SEQS = "SELECT seq FROM deltas WHERE node_id = ? AND seq BETWEEN ? AND ?"
# Users of the batch ever assigned to the node (the others' deltas are not counted):
# whether still assigned (removed users' deltas count: the traffic happened), and
# what enforcement needs, read once here instead of again after the writes.
SELECT_COUNTABLE_USERS = (
    "SELECT a.user_id, a.removed_at_ms IS NULL, u.data_limit_bytes, u.expires_at_ms,"
    " u.enforced_reason, u.quota_used_bytes, l.lease_id IS NOT NULL"
    " FROM assignments a JOIN users u ON u.user_id = a.user_id"
    " LEFT JOIN leases l ON l.user_id = a.user_id AND l.node_id = a.node_id"
    " WHERE a.user_id IN (SELECT value FROM json_each(?)) AND a.node_id = ?"
)
INSERT_LEDGER = (
    "INSERT INTO deltas (node_id, seq, user_id, engine, epoch, uplink_bytes,"
    " downlink_bytes, sampled_at_ms, counted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ADD_HOURLY = (
    "INSERT INTO usage_hourly (user_id, node_id, engine, hour_ms, uplink_bytes,"
    " downlink_bytes) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT"
    " (user_id, node_id, engine, hour_ms) DO UPDATE SET"
    " uplink_bytes = usage_hourly.uplink_bytes + excluded.uplink_bytes,"
    " downlink_bytes = usage_hourly.downlink_bytes + excluded.downlink_bytes"
)
ADD_USER_TOTALS = (
    "UPDATE users SET uplink_bytes = uplink_bytes + ?,"
    " downlink_bytes = downlink_bytes + ?, quota_used_bytes = quota_used_bytes + ?"
    " WHERE user_id = ?"
)
ADD_LEASE_USE = "UPDATE leases SET used_bytes = used_bytes + ? WHERE user_id = ? AND node_id = ?"
ADD_NODE_TOTALS = (
    "UPDATE nodes SET acked_seq = ?, uplink_bytes = uplink_bytes + ?,"
    " downlink_bytes = downlink_bytes + ?, last_seen_ms = ? WHERE node_id = ?"
)


def apply_usage(
    conn: sqlite3.Connection, node_id: str, deltas: Sequence[UsageDelta], at: int
) -> Applied:
    """Write the deltas not yet in the ledger and everything they add to.

    Runs inside the caller's transaction. A delta whose (node_id, seq) is
    already in the ledger adds nothing, so replays and overlapping batches are
    harmless in any order.
    """
    row = conn.execute(SELECT_ACKED, (node_id,)).fetchone()
    if row is None:
        raise LookupError(f"unknown node {node_id!r}")
    acked = row[0]
    if not deltas:
        return Applied(acked, 0, None, [])
    fresh: Sequence[UsageDelta] = deltas
    first, last = deltas[0][0], deltas[-1][0]
    if first <= acked:
        seen = {seq for (seq,) in conn.execute(SELECT_SEEN_SEQS, (node_id, first, last))}
        fresh = [delta for delta in deltas if delta[0] not in seen]
    new_acked = max(acked, last)
    if not fresh:
        return Applied(new_acked, 0, None, [])
    users = json.dumps(list({delta[1]: None for delta in fresh}))
    countable = [
        CountableUser(*row) for row in conn.execute(SELECT_COUNTABLE_USERS, (users, node_id))
    ]
    agg = aggregate(node_id, fresh, {user.user_id for user in countable})
    conn.executemany(INSERT_LEDGER, agg.ledger)
    conn.executemany(ADD_HOURLY, agg.hourly_rows(node_id))
    user_rows = agg.user_rows()
    conn.executemany(ADD_USER_TOTALS, user_rows)
    leased = {user.user_id for user in countable if user.leased}
    if leased:
        conn.executemany(
            ADD_LEASE_USE,
            [(total, user_id, node_id) for _, _, total, user_id in user_rows if user_id in leased],
        )
    conn.execute(ADD_NODE_TOTALS, (new_acked, agg.node_uplink, agg.node_downlink, at, node_id))
    return applied(new_acked, len(fresh), agg, countable)


class IngestMixin:
    """Mixed into SqliteStorage: ingest, node reads and usage reads."""

    _write: Any
    _read: Any
    _audit: Any
    _apply_decisions: Any
    _grant_in: Any

    async def ingest(
        self, node_id: str, deltas: Sequence[UsageDelta], at_ms: int | None = None
    ) -> IngestResult:
        """Apply a batch exactly once and commit; returns the ack to send.

        `deltas` as decode_usage returns them. The caller sends the Ack (and
        the lease grants) only after this returns.
        """
        check_batch(deltas)
        at = at_ms if at_ms is not None else now_ms()
        async with self._write() as tx:
            applied = await self._apply_usage(tx, node_id, deltas, at)
            agg = applied.agg
            if agg is None:
                return IngestResult(applied.acked_seq, 0, len(deltas), set(), [])
            if applied.unassigned:
                log.warning(
                    "node %s reported usage of users no longer assigned to it (counted): %s",
                    node_id, ", ".join(applied.unassigned[:20]),
                )  # fmt: skip
            for user_id in sorted(agg.rejected_users):
                log.warning("node %s reported usage of foreign user %s: ignored", node_id, user_id)
                await self._audit(
                    tx, f"node:{node_id}", "reject-usage", user_id,
                    "usage reported for a user never assigned to this node", at,
                )  # fmt: skip
            await self._apply_decisions(tx, at, applied.limits, applied.quota_used)
            limited = tx.limited  # users of this batch with a data limit
            leases = await self._grant_in(tx, node_id, limited, at) if limited else []
            return IngestResult(
                applied.acked_seq,
                applied.fresh,
                len(deltas) - applied.fresh,
                agg.rejected_users,
                leases,
            )

    async def _apply_usage(
        self, tx: Any, node_id: str, deltas: Sequence[UsageDelta], at: int
    ) -> Applied:
        """The backend's apply_usage inside tx (SQLite: one hop on the storage thread)."""
        return await run_sync(tx.db, apply_usage, node_id, deltas, at)

    async def node_known(self, node_id: str) -> bool:
        async with (
            self._read() as db,
            db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)) as cursor,
        ):
            return await cursor.fetchone() is not None

    async def acked_seq(self, node_id: str) -> int:
        async with self._read() as db, db.execute(SELECT_ACKED, (node_id,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else 0

    async def node_usage(self, node_id: str) -> tuple[int, int]:
        async with (
            self._read() as db,
            db.execute(
                "SELECT uplink_bytes, downlink_bytes FROM nodes WHERE node_id = ?", (node_id,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return (row[0], row[1]) if row else (0, 0)

    async def hourly_usage(self, user_id: str) -> list[tuple[str, int, int, int, int]]:
        """(node_id, engine, hour_ms, uplink, downlink) rows of one user."""
        async with (
            self._read() as db,
            db.execute(
                "SELECT node_id, engine, hour_ms, uplink_bytes, downlink_bytes FROM usage_hourly"
                " WHERE user_id = ? ORDER BY node_id, engine, hour_ms",
                (user_id,),
            ) as cursor,
        ):
            return [tuple(row) for row in await cursor.fetchall()]
