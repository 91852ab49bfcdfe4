"""Exactly-once usage ingest on PostgreSQL (asyncpg): the twin of sqlite_ingest.apply_usage.

Same contract: runs inside the caller's transaction; a delta whose (node_id,
seq) is in the ledger adds nothing. With several central replicas a node may
reconnect to another replica while its old stream is still committing: the
node's row is locked first (`FOR UPDATE`), so two batches of one node apply one
after the other and the second sees the first's ledger rows.

Writes are one statement per table: the ledger through binary COPY, the
rollups and totals as UPDATE/UPSERT over `unnest()` of arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeward.proto.usage_codec import UsageDelta

from .ingest import Applied, CountableUser, aggregate, applied

LEDGER_COLUMNS = (
    "node_id", "seq", "user_id", "engine", "epoch", "uplink_bytes", "downlink_bytes",
    "sampled_at_ms", "counted",
)  # fmt: skip
LOCK_NODE = "SELECT acked_seq, ledger_floor_seq FROM nodes WHERE node_id = $1 FOR UPDATE"
SELECT_SEEN_SEQS = "SELECT seq FROM deltas WHERE node_id = $1 AND seq BETWEEN $2 AND $3"
SELECT_COUNTABLE_USERS = (
    "SELECT a.user_id, a.removed_at_ms IS NULL, u.data_limit_bytes, u.expires_at_ms,"
    " u.enforced_reason, u.quota_used_bytes, l.lease_id IS NOT NULL"
    " FROM unnest($1::text[]) AS b(user_id)"
    " JOIN assignments a ON a.user_id = b.user_id AND a.node_id = $2"
    " JOIN users u ON u.user_id = a.user_id"
    " LEFT JOIN leases l ON l.user_id = a.user_id AND l.node_id = a.node_id"
)
ADD_HOURLY = (
    "INSERT INTO usage_hourly (user_id, node_id, engine, hour_ms, uplink_bytes, downlink_bytes)"
    " SELECT u, $2, e, h, up, down"
    " FROM unnest($1::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[])"
    " AS t(u, e, h, up, down)"
    " ON CONFLICT (user_id, node_id, engine, hour_ms) DO UPDATE SET"
    " uplink_bytes = usage_hourly.uplink_bytes + excluded.uplink_bytes,"
    " downlink_bytes = usage_hourly.downlink_bytes + excluded.downlink_bytes"
)
# Row locks on the batch's users in one order (user_id) before the totals UPDATE,
# whose own lock order follows its plan: two nodes' batches sharing users through
# two replicas would otherwise deadlock.
LOCK_USERS = "SELECT 1 FROM users WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE"
ADD_USER_TOTALS = (
    "UPDATE users SET uplink_bytes = users.uplink_bytes + t.up,"
    " downlink_bytes = users.downlink_bytes + t.down,"
    " quota_used_bytes = users.quota_used_bytes + t.up + t.down"
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(user_id, up, down)"
    " WHERE users.user_id = t.user_id"
    # Under the row locks: includes what other replicas' committed batches added.
    " RETURNING users.user_id, users.quota_used_bytes"
)
ADD_LEASE_USE = (
    "UPDATE leases SET used_bytes = leases.used_bytes + t.used"
    " FROM unnest($1::text[], $2::bigint[]) AS t(user_id, used)"
    " WHERE leases.user_id = t.user_id AND leases.node_id = $3"
)
ADD_NODE_TOTALS = (
    "UPDATE nodes SET acked_seq = $1, uplink_bytes = uplink_bytes + $2,"
    " downlink_bytes = downlink_bytes + $3, last_seen_ms = $4 WHERE node_id = $5"
)


async def apply_usage(conn: Any, node_id: str, deltas: Sequence[UsageDelta], at: int) -> Applied:
    """conn: an asyncpg connection inside a transaction."""
    row = await conn.fetchrow(LOCK_NODE, node_id)
    if row is None:
        raise LookupError(f"unknown node {node_id!r}")
    acked, floor = row
    if not deltas:
        return Applied(acked, 0, None, [])
    fresh: Sequence[UsageDelta] = deltas
    first, last = deltas[0][0], deltas[-1][0]
    if first <= acked:
        seen = {row[0] for row in await conn.fetch(SELECT_SEEN_SEQS, node_id, first, last)}
        fresh = [delta for delta in deltas if delta[0] > floor and delta[0] not in seen]
    new_acked = max(acked, last)
    if not fresh:
        return Applied(new_acked, 0, None, [])
    users = list({delta[1]: None for delta in fresh})
    countable = [
        CountableUser(*row) for row in await conn.fetch(SELECT_COUNTABLE_USERS, users, node_id)
    ]
    agg = aggregate(node_id, fresh, {user.user_id for user in countable})
    quota_after: dict[str, int] = {}
    await conn.copy_records_to_table("deltas", records=agg.ledger, columns=LEDGER_COLUMNS)
    if agg.hourly:
        hourly_keys, sums = list(agg.hourly), list(agg.hourly.values())
        await conn.execute(
            ADD_HOURLY,
            [key[0] for key in hourly_keys],
            node_id,
            [key[1] for key in hourly_keys],
            [key[2] for key in hourly_keys],
            [s[0] for s in sums],
            [s[1] for s in sums],
        )
        await conn.execute(LOCK_USERS, list(agg.per_user))
        quota_after = dict(
            await conn.fetch(
                ADD_USER_TOTALS,
                list(agg.per_user),
                [s[0] for s in agg.per_user.values()],
                [s[1] for s in agg.per_user.values()],
            )
        )
    leased = [user.user_id for user in countable if user.leased and user.user_id in agg.per_user]
    if leased:
        used = [sum(agg.per_user[user_id]) for user_id in leased]
        await conn.execute(ADD_LEASE_USE, leased, used, node_id)
    await conn.execute(ADD_NODE_TOTALS, new_acked, agg.node_uplink, agg.node_downlink, at, node_id)
    return applied(new_acked, len(fresh), agg, countable, quota_after)


# Retention of the raw ledger (see sqlite_ingest.prune_ledger): floors first.
RAISE_LEDGER_FLOORS = (
    "UPDATE nodes SET ledger_floor_seq = GREATEST(nodes.ledger_floor_seq, pruned.seq)"
    " FROM (SELECT node_id, max(seq) AS seq FROM deltas"
    " WHERE sampled_at_ms < $1 GROUP BY node_id) AS pruned"
    " WHERE nodes.node_id = pruned.node_id"
)


async def prune_ledger(conn: Any, before_ms: int) -> int:
    """Delete ledger rows sampled before before_ms (inside the caller's transaction),
    raising each node's ledger_floor_seq over them first; returns the rows deleted.

    The ledger rows of several replicas' batches of one node are ordered by the
    node row lock: taken here too, in node order, before the floor moves.
    """
    await conn.execute(
        "SELECT 1 FROM nodes WHERE node_id IN (SELECT DISTINCT node_id FROM deltas"
        " WHERE sampled_at_ms < $1) ORDER BY node_id FOR UPDATE",
        before_ms,
    )
    await conn.execute(RAISE_LEDGER_FLOORS, before_ms)
    status = await conn.execute("DELETE FROM deltas WHERE sampled_at_ms < $1", before_ms)
    return int(status.split()[-1])
