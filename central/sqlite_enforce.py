"""Enforcement (decide() applied in a transaction) and quota leases on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from edgeward.proto import v1

from .decide import Decision, UserLimits, decide
from .leases import remaining_bytes, split_leases
from .records import Transaction, now_ms

SYSTEM_ACTOR = "central"

# Users that decide() can act on: a limit, an expiry, or a suspension to lift.
SELECT_LIMITS = (
    "SELECT user_id, data_limit_bytes, expires_at_ms, enforced_reason, quota_used_bytes"
    " FROM users WHERE (data_limit_bytes IS NOT NULL OR expires_at_ms IS NOT NULL"
    " OR enforced_reason <> 0)"
)
ONLY_USERS = " AND user_id IN (SELECT value FROM json_each(?))"
SET_ENFORCED = "UPDATE users SET enforced_reason = ? WHERE user_id = ?"
SELECT_SERVING_NODES = (
    "SELECT node_id FROM assignments WHERE user_id = ? AND removed_at_ms IS NULL ORDER BY node_id"
)
# Per limited user of the node: every node serving it and what each still holds.
SELECT_LEASE_STATE = (
    "SELECT u.user_id, u.data_limit_bytes, u.quota_used_bytes, a.node_id,"
    " l.lease_id, l.granted_bytes - l.used_bytes"
    " FROM users u JOIN assignments a ON a.user_id = u.user_id"
    " AND a.removed_at_ms IS NULL"
    " LEFT JOIN leases l ON l.user_id = u.user_id AND l.node_id = a.node_id"
    " WHERE u.data_limit_bytes IS NOT NULL AND u.user_id IN"
    " (SELECT user_id FROM assignments WHERE node_id = ? AND removed_at_ms IS NULL)"
)
ONLY_LEASE_USERS = " AND u.user_id IN (SELECT value FROM json_each(?))"
UPSERT_LEASE = (
    "INSERT INTO leases (user_id, node_id, lease_id, granted_bytes, used_bytes,"
    " granted_at_ms) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (user_id, node_id)"
    " DO UPDATE SET lease_id = excluded.lease_id,"
    " granted_bytes = excluded.granted_bytes, used_bytes = 0,"
    " granted_at_ms = excluded.granted_at_ms"
)


class EnforcementMixin:
    """Mixed into SqliteStorage: enforce(), grant_leases() and their in-transaction parts."""

    _write: Any
    _read: Any
    _audit: Any
    _serialize_enforcement: Any
    _serialize_grants: Any

    async def enforce(
        self, at_ms: int | None = None, user_ids: Iterable[str] | None = None
    ) -> list[Decision]:
        """Run decide() over the given users (all users when None) and apply the result."""
        at = at_ms if at_ms is not None else now_ms()
        async with self._write() as tx:
            return await self._enforce_in(tx, at, None if user_ids is None else list(user_ids))

    async def _enforce_in(
        self, tx: Transaction, at: int, user_ids: list[str] | None, actor: str = SYSTEM_ACTOR
    ) -> list[Decision]:
        await self._serialize_enforcement(tx)
        query, params = SELECT_LIMITS, cast(tuple[str, ...], ())
        if user_ids is not None:
            query, params = query + ONLY_USERS, (json.dumps(user_ids),)
        rows = await tx.db.execute_fetchall(query, params)
        limits = {row[0]: UserLimits(row[1], row[2], v1.Reason(row[3])) for row in rows}
        usage = {row[0]: row[4] for row in rows}
        return await self._apply_decisions(tx, at, limits, usage, actor)

    async def _apply_decisions(
        self,
        tx: Transaction,
        at: int,
        limits: dict[str, UserLimits],
        usage: dict[str, int],
        actor: str = SYSTEM_ACTOR,
    ) -> list[Decision]:
        """decide() over users already read in this transaction; record and push the result."""
        tx.limited = [
            user_id for user_id, user in limits.items() if user.data_limit_bytes is not None
        ]
        decisions = decide(usage, limits, at)
        for decision in decisions:
            suspended = decision.action == v1.Action.SUSPEND
            await tx.db.execute(
                SET_ENFORCED, (int(decision.reason) if suspended else 0, decision.user_id)
            )
            user = limits[decision.user_id]
            why = _decision_reason(decision, usage[decision.user_id], user)
            await self._audit(
                tx, actor, "suspend" if suspended else "resume", decision.user_id, why, at
            )
            command = v1.Command(decision.user_id, decision.action, decision.reason)
            for node_id in await self._serving_nodes(tx.db, decision.user_id):
                tx.touch(node_id, decision.user_id, command)
        return decisions

    async def _serving_nodes(self, db: Any, user_id: str) -> list[str]:
        rows = await db.execute_fetchall(SELECT_SERVING_NODES, (user_id,))
        return [node_id for (node_id,) in rows]

    async def grant_leases(
        self, node_id: str, user_ids: Iterable[str] | None = None, at_ms: int | None = None
    ) -> list[v1.Lease]:
        """Top up this node's leases of the given users (all its users when None).

        Send the result right after the latest Ack: a lease allows `bytes` beyond
        the usage that ack covers.
        """
        at = at_ms if at_ms is not None else now_ms()
        async with self._write() as tx:
            return await self._grant_in(
                tx, node_id, None if user_ids is None else list(user_ids), at, fresh=True
            )

    async def _grant_in(
        self,
        tx: Transaction,
        node_id: str,
        user_ids: list[str] | None,
        at: int,
        fresh: bool = False,
    ) -> list[v1.Lease]:
        """fresh: the node forgot its leases (new connection); re-send even unchanged ones."""
        await self._serialize_grants(tx, node_id, user_ids)
        query, params = SELECT_LEASE_STATE, cast(tuple[str, ...], (node_id,))
        if user_ids is not None:
            query, params = query + ONLY_LEASE_USERS, (node_id, json.dumps(user_ids))
        rows = await tx.db.execute_fetchall(query, params)
        users: dict[str, tuple[int, dict[str, int], int]] = {}
        for user_id, limit, used, serving, lease_id, held in rows:
            remaining, holdings, last_id = users.setdefault(
                user_id, (remaining_bytes(limit, used), {}, 0)
            )
            holdings[serving] = max(0, held or 0)
            users[user_id] = (remaining, holdings, max(last_id, lease_id or 0))
        grants = []
        for user_id in sorted(users):
            remaining, holdings, last_id = users[user_id]
            new = split_leases(remaining, holdings, [node_id]).get(node_id)
            if new is None and not fresh:
                continue
            if new is None:
                new = holdings[node_id]
            grants.append(v1.Lease(user_id=user_id, bytes=new, lease_id=last_id + 1))
        if grants:
            await tx.db.executemany(
                UPSERT_LEASE,
                [(lease.user_id, node_id, lease.lease_id, lease.bytes, at) for lease in grants],
            )
        return grants

    async def leases_held(self, user_id: str) -> dict[str, int]:
        """node -> outstanding bytes of a user's leases (what the invariant bounds)."""
        async with (
            self._read() as db,
            db.execute(
                "SELECT node_id, max(0, granted_bytes - used_bytes) FROM leases WHERE user_id = ?",
                (user_id,),
            ) as cursor,
        ):
            return dict(await cursor.fetchall())


def _decision_reason(decision: Decision, used: int, limits: UserLimits) -> str:
    reason = decision.reason
    if decision.action == v1.Action.RESUME:
        return f"{reason.name.lower()} no longer applies (used {used} bytes)"
    if reason == v1.Reason.EXPIRED:
        return f"expired at {limits.expires_at_ms} ms"
    return f"quota exhausted: used {used} of {limits.data_limit_bytes} bytes"
