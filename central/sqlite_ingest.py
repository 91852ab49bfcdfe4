"""Exactly-once usage ingest on SQLite, and the usage reads.

A batch's fresh deltas go into the ledger as one usage_batches row, in one
transaction together with the node's acked_seq; the caller acks only after
the commit (ledger_usage). Folding adds ledgered batches to the rollups,
totals and lease use (fold_batches): in the same transaction (apply_usage),
or later for many batches at once (sqlite_fold.py). Both are plain functions
over a sqlite3 connection, run in one hop on the storage thread: one
executemany per table, rows summed in Python first (ingest.aggregate_batches).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from edgeward.proto import v1
from edgeward.proto.usage_codec import (
    UsageColumns,
    UsageDelta,
    batch_users,
    decode_columns,
    encode_usage,
)

from .ingest import Applied, CountableUser, aggregate_batches, applied, check_batch
from .records import IngestResult, now_ms
from .sqlite_core import run_sync

log = logging.getLogger("edgeward.central.storage")

SELECT_ACKED = "SELECT acked_seq FROM nodes WHERE node_id = ?"
SELECT_NODE_SEQS = "SELECT acked_seq, ledger_floor_seq FROM nodes WHERE node_id = ?"
# Stored batches holding any seq of [first, last] (keyed by last seq: a range scan).
SELECT_OVERLAPPING = (
    "SELECT payload FROM usage_batches WHERE node_id = ? AND last_seq >= ? AND first_seq <= ?"
)
# Ledger rows written before usage_batches (schema version < 5).
SELECT_LEGACY_SEEN = "SELECT seq FROM deltas WHERE node_id = ? AND seq BETWEEN ? AND ?"
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
# Unfolded (folded = 0): rejected users are known, and stored, when it is folded.
INSERT_BATCH = (
    "INSERT INTO usage_batches (node_id, last_seq, first_seq, received_at_ms,"
    " rejected_users, payload, folded) VALUES (?, ?, ?, ?, '[]', ?, 0)"
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
SET_ACKED = "UPDATE nodes SET acked_seq = ?, last_seen_ms = ? WHERE node_id = ?"
ADD_NODE_BYTES = (
    "UPDATE nodes SET uplink_bytes = uplink_bytes + ?,"
    " downlink_bytes = downlink_bytes + ? WHERE node_id = ?"
)
SELECT_UNFOLDED = (
    "SELECT node_id, last_seq FROM usage_batches WHERE folded = 0 ORDER BY node_id, last_seq"
)
SELECT_PAYLOAD = "SELECT payload FROM usage_batches WHERE node_id = ? AND last_seq = ?"
# Users of a batch whose quota decisions and lease grants must follow its ack.
SELECT_LIMITED_OR_LEASED = (
    "SELECT 1 FROM users WHERE user_id IN (SELECT value FROM json_each(?))"
    " AND data_limit_bytes IS NOT NULL"
    " UNION ALL SELECT 1 FROM leases WHERE node_id = ?"
    " AND user_id IN (SELECT value FROM json_each(?)) LIMIT 1"
)
MARK_FOLDED = (
    "UPDATE usage_batches SET folded = 1, rejected_users = ? WHERE node_id = ? AND last_seq = ?"
)
# Retention of the raw ledger: the floor first (it must cover what is deleted).
RAISE_LEDGER_FLOORS = (
    "UPDATE nodes SET ledger_floor_seq = max(ledger_floor_seq, pruned.seq)"
    " FROM (SELECT node_id, max(last_seq) AS seq FROM usage_batches"
    " WHERE received_at_ms < ? GROUP BY node_id) AS pruned"
    " WHERE nodes.node_id = pruned.node_id"
)
RAISE_LEGACY_FLOORS = (
    "UPDATE nodes SET ledger_floor_seq = max(ledger_floor_seq, pruned.seq)"
    " FROM (SELECT node_id, max(seq) AS seq FROM deltas"
    " WHERE sampled_at_ms < ? GROUP BY node_id) AS pruned"
    " WHERE nodes.node_id = pruned.node_id"
)
DELETE_OLD_BATCHES = "DELETE FROM usage_batches WHERE received_at_ms < ?"
DELETE_OLD_LEGACY = "DELETE FROM deltas WHERE sampled_at_ms < ?"


def encode_payload(deltas: Sequence[UsageDelta]) -> bytes:
    return bytes(encode_usage(deltas))


def decode_payload(payload: bytes) -> UsageColumns:
    return decode_columns(v1.UsageBatch.parse(payload))


def seen_seqs(conn: sqlite3.Connection, node_id: str, first: int, last: int) -> set[int]:
    """Seqs of [first, last] already in the ledger (replays, overlaps: the rare path)."""
    seen = {seq for (seq,) in conn.execute(SELECT_LEGACY_SEEN, (node_id, first, last))}
    for (payload,) in conn.execute(SELECT_OVERLAPPING, (node_id, first, last)):
        seen.update(delta[0] for delta in decode_payload(payload) if first <= delta[0] <= last)
    return seen


def ledger_usage(
    conn: sqlite3.Connection,
    node_id: str,
    deltas: Sequence[UsageDelta],
    at: int,
    payload: bytes | None = None,
) -> tuple[int, Sequence[UsageDelta]]:
    """Put the deltas not yet in the ledger into it, as one unfolded batch, and raise
    the node's acked_seq; returns (acked_seq, fresh deltas). Rollups and totals
    follow in fold_batches.

    Runs inside the caller's transaction. A delta whose (node_id, seq) is
    already in the ledger, or at or below the node's pruned floor, adds
    nothing, so replays and overlapping batches are harmless in any order.
    payload: the deltas' v1.UsageBatch bytes as received, stored when every delta
    is fresh (saves encoding them again).
    """
    row = conn.execute(SELECT_NODE_SEQS, (node_id,)).fetchone()
    if row is None:
        raise LookupError(f"unknown node {node_id!r}")
    acked, floor = row
    if not deltas:
        return acked, []
    fresh: Sequence[UsageDelta] = deltas
    first, last = deltas[0][0], deltas[-1][0]
    if first <= acked:  # floor <= acked: a batch past acked is wholly fresh
        seen = seen_seqs(conn, node_id, first, last)
        fresh = [delta for delta in deltas if delta[0] > floor and delta[0] not in seen]
    new_acked = max(acked, last)
    if fresh:
        if payload is None or len(fresh) != len(deltas):
            payload = encode_payload(fresh)
        conn.execute(INSERT_BATCH, (node_id, fresh[-1][0], fresh[0][0], at, payload))
    conn.execute(SET_ACKED, (new_acked, at, node_id))
    return new_acked, fresh


def needs_fold_now(conn: sqlite3.Connection, node_id: str, user_ids: Iterable[str]) -> bool:
    """Whether one of the users has a data limit or holds a lease on the node: their
    quota decisions and lease grants must follow the batch's ack (not a later fold)."""
    users = json.dumps(list(user_ids))
    return conn.execute(SELECT_LIMITED_OR_LEASED, (users, node_id, users)).fetchone() is not None


def fold_batches(
    conn: sqlite3.Connection, decoded: dict[tuple[str, int], Sequence[UsageDelta]] | None = None
) -> dict[str, Applied]:
    """Add every unfolded ledger batch to the rollups, totals and lease use, node by
    node, and mark them folded; returns each node's Applied (acked_seq unused: 0).

    Runs inside the caller's transaction. Under load many batches fold at once:
    one rollup upsert per user x engine x hour and one totals update per user,
    whatever the number of batches. A node's users are read after the previous
    node's writes, so quota use after the fold is exact for users on several nodes.
    decoded: deltas of (node_id, last_seq) batches kept since ingest (taken from
    it); a batch not there is decoded from its stored payload.
    """
    decoded = decoded if decoded is not None else {}
    by_node: dict[str, list[tuple[int, Sequence[UsageDelta]]]] = {}
    for node_id, last_seq in conn.execute(SELECT_UNFOLDED).fetchall():
        rows = decoded.pop((node_id, last_seq), None)
        if rows is None:
            (payload,) = conn.execute(SELECT_PAYLOAD, (node_id, last_seq)).fetchone()
            rows = decode_payload(payload)
        by_node.setdefault(node_id, []).append((last_seq, rows))
    folded = {}
    for node_id, batches in by_node.items():
        users_of = [batch_users(rows) for _, rows in batches]
        users = json.dumps(list(set().union(*users_of)))
        countable = [
            CountableUser(*row) for row in conn.execute(SELECT_COUNTABLE_USERS, (users, node_id))
        ]
        agg = aggregate_batches([rows for _, rows in batches], {user.user_id for user in countable})
        conn.executemany(ADD_HOURLY, agg.hourly_rows(node_id))
        user_rows = agg.user_rows()
        conn.executemany(ADD_USER_TOTALS, user_rows)
        leased = {user.user_id for user in countable if user.leased}
        if leased:
            conn.executemany(
                ADD_LEASE_USE,
                [(total, user, node_id) for _, _, total, user in user_rows if user in leased],
            )
        conn.execute(ADD_NODE_BYTES, (agg.node_uplink, agg.node_downlink, node_id))
        rejected = agg.rejected_users
        conn.executemany(
            MARK_FOLDED,
            [
                (json.dumps(sorted(named & rejected)) if rejected else "[]", node_id, last_seq)
                for (last_seq, _), named in zip(batches, users_of, strict=True)
            ],
        )  # fmt: skip
        folded[node_id] = applied(0, sum(len(rows) for _, rows in batches), agg, countable)
    return folded


def apply_usage(
    conn: sqlite3.Connection, node_id: str, deltas: Sequence[UsageDelta], at: int
) -> Applied:
    """ledger_usage and fold_batches in the caller's transaction: the batch's Applied
    (with whatever else was unfolded for this node)."""
    acked, fresh = ledger_usage(conn, node_id, deltas, at)
    if not fresh:
        return Applied(acked, 0, None, [])
    mine = fold_batches(conn)[node_id]
    return replace(mine, acked_seq=acked, fresh=len(fresh))


def prune_ledger(conn: sqlite3.Connection, before_ms: int) -> int:
    """Delete ledger data received before before_ms (inside the caller's transaction).

    Each node's ledger_floor_seq first rises to the highest pruned seq, so a
    replay of a pruned seq is still recognised as seen and adds nothing.
    Returns the number of deltas deleted.
    """
    conn.execute(RAISE_LEDGER_FLOORS, (before_ms,))
    conn.execute(RAISE_LEGACY_FLOORS, (before_ms,))
    deleted = 0
    for (payload,) in conn.execute(
        "SELECT payload FROM usage_batches WHERE received_at_ms < ?", (before_ms,)
    ):
        deleted += len(decode_payload(payload))
    conn.execute(DELETE_OLD_BATCHES, (before_ms,))
    return deleted + conn.execute(DELETE_OLD_LEGACY, (before_ms,)).rowcount


def ledger_rows(conn: sqlite3.Connection, node_id: str | None = None) -> list[tuple]:
    """The ledger as one row per delta, ordered by (node_id, seq): (node_id, seq,
    user_id, engine, epoch, uplink, downlink, sampled_at_ms, counted).

    For readers of the database file (tests, tools): stored batches decoded,
    older per-delta rows as they are.
    """
    where, params = ("WHERE node_id = ?", (node_id,)) if node_id is not None else ("", ())
    rows = [
        tuple(row)
        for row in conn.execute(
            "SELECT node_id, seq, user_id, engine, epoch, uplink_bytes, downlink_bytes,"
            f" sampled_at_ms, counted FROM deltas {where}",
            params,
        )
    ]
    for node, rejected, payload in conn.execute(
        f"SELECT node_id, rejected_users, payload FROM usage_batches {where}", params
    ):
        skip = set(json.loads(rejected))
        rows.extend((node, *d, 0 if d[1] in skip else 1) for d in decode_payload(payload))
    return sorted(rows, key=lambda row: (row[0], row[1]))


class IngestMixin:
    """Mixed into SqliteStorage and PgStorage: ingest, node reads and usage reads.

    Here a batch is applied whole in one transaction (ledger, rollups, totals,
    decisions, grants). SqliteStorage's FoldMixin (sqlite_fold.py) overrides
    ingest to commit the ledger first and fold later.
    """

    _write: Any
    _read: Any
    _audit: Any
    _apply_decisions: Any
    _grant_in: Any

    async def ingest(
        self,
        node_id: str,
        deltas: Sequence[UsageDelta],
        at_ms: int | None = None,
        *,
        defer: bool = False,
        payload: bytes | None = None,
    ) -> IngestResult:
        """Apply a batch exactly once and commit; returns the ack to send.

        `deltas` as decode_usage returns them. The caller sends the Ack (and
        the lease grants) only after this returns. defer and payload: see
        FoldMixin.ingest (a whole-batch backend applies every batch at once).
        """
        check_batch(deltas)
        at = at_ms if at_ms is not None else now_ms()
        async with self._write() as tx:
            applied = await self._apply_usage(tx, node_id, deltas, at)
            agg = applied.agg
            if agg is None:
                return IngestResult(applied.acked_seq, 0, len(deltas), set(), [])
            await self._report_usage(tx, node_id, applied, at)
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

    async def ingest_many(
        self,
        node_id: str,
        batches: Sequence[tuple[Sequence[UsageDelta], bytes | None]],
        at_ms: int | None = None,
        *,
        defer: bool = False,
    ) -> list[IngestResult]:
        """ingest() of each batch in order (see FoldMixin.ingest_many)."""
        return [
            await self.ingest(node_id, deltas, at_ms, defer=defer, payload=payload)
            for deltas, payload in batches
        ]

    async def _report_usage(self, tx: Any, node_id: str, applied: Applied, at: int) -> None:
        """Log usage of users no longer assigned (counted); log and audit usage of
        foreign users (not counted)."""
        agg = applied.agg
        assert agg is not None
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

    async def _apply_usage(
        self, tx: Any, node_id: str, deltas: Sequence[UsageDelta], at: int
    ) -> Applied:
        """The backend's apply_usage inside tx (SQLite: one hop on the storage thread)."""
        return await run_sync(tx.db, apply_usage, node_id, deltas, at)

    async def prune_ledger(self, before_ms: int) -> int:
        """Delete the raw usage ledger (per-delta records) received before before_ms.

        Rollups, totals and acked seqs stay. Each node's ledger floor rises to the
        highest pruned seq first, so a later replay of a pruned seq is still seen
        and adds nothing (a seq at or below the floor that central never received
        is dropped too: only batches older than the retention period). Returns
        the number of deltas deleted. SQLite prunes batches by when central
        received them; PostgreSQL (still one ledger row per delta) by when the
        delta was sampled.
        """
        if isinstance(before_ms, bool) or not isinstance(before_ms, int) or before_ms < 0:
            raise ValueError(f"before_ms must be a time in ms >= 0, not {before_ms!r}")
        async with self._write() as tx:
            return await self._prune_ledger(tx, before_ms)

    async def _prune_ledger(self, tx: Any, before_ms: int) -> int:
        return await run_sync(tx.db, prune_ledger, before_ms)

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
