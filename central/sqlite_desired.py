"""Node desired state on SQLite: snapshots and changes since a revision (reads only)."""

from __future__ import annotations

import json
from typing import Any, cast

from edgeward.proto import v1

from . import desired

SELECT_REVISION = "SELECT revision FROM nodes WHERE node_id = ?"
SELECT_CHANGED_USERS = "SELECT DISTINCT user_id FROM desired_log WHERE node_id = ? AND revision > ?"
SELECT_INBOUNDS = (
    "SELECT tag, engine, protocol, flow, cipher FROM node_inbounds WHERE node_id = ? ORDER BY tag"
)
SELECT_USER_STATES = (
    "SELECT u.user_id, c.uuid, c.password, c.wg_public_key, c.wg_preshared_key,"
    " c.wg_address, u.expires_at_ms, u.admin_suspended, u.enforced_reason,"
    " (SELECT p.engines FROM plans p WHERE p.plan_id = u.plan_id)"
    " FROM assignments a JOIN users u ON u.user_id = a.user_id"
    " JOIN credentials c ON c.user_id = a.user_id"
    " WHERE a.node_id = ? AND a.removed_at_ms IS NULL"
)
ONLY_USERS = " AND a.user_id IN (SELECT value FROM json_each(?))"
ORDER_USERS = " ORDER BY u.user_id"


class DesiredMixin:
    """Mixed into SqliteStorage: snapshot() and desired_change()."""

    _read: Any

    async def snapshot(self, node_id: str) -> v1.DesiredSnapshot:
        async with self._read() as db:
            revision = await _revision(db, node_id)
            users = await _user_states(db, node_id, None)
            inbounds = await _inbounds(db, node_id)
        return desired.snapshot(revision, users, inbounds)

    async def desired_change(
        self, node_id: str, base_revision: int
    ) -> v1.DesiredChange | v1.DesiredSnapshot | None:
        """What a node holding base_revision needs: None if current, else a change
        (users changed since base), or a snapshot if base is not one we issued."""
        async with self._read() as db:
            revision = await _revision(db, node_id)
            if base_revision == revision:
                return None
            if base_revision > revision:
                users = await _user_states(db, node_id, None)
                return desired.snapshot(revision, users, await _inbounds(db, node_id))
            changed = [
                user_id
                for (user_id,) in await db.execute_fetchall(
                    SELECT_CHANGED_USERS, (node_id, base_revision)
                )
            ]
            users = await _user_states(db, node_id, changed)
            inbounds = await _inbounds(db, node_id)
        present = {user.user_id for user in users}
        removed = [user_id for user_id in changed if user_id not in present]
        return desired.change(revision, base_revision, users, removed, inbounds)


async def _revision(db: Any, node_id: str) -> int:
    rows = list(await db.execute_fetchall(SELECT_REVISION, (node_id,)))
    if not rows:
        raise LookupError(f"unknown node {node_id!r}")
    return rows[0][0]


async def _inbounds(db: Any, node_id: str) -> list[desired.Inbound]:
    return [
        desired.Inbound(tag, v1.Engine(engine), v1.Protocol(protocol), flow, cipher)
        for tag, engine, protocol, flow, cipher in await db.execute_fetchall(
            SELECT_INBOUNDS, (node_id,)
        )
    ]


async def _user_states(
    db: Any, node_id: str, user_ids: list[str] | None
) -> list[desired.UserState]:
    query, params = SELECT_USER_STATES, cast(tuple[str, ...], (node_id,))
    if user_ids is not None:
        query, params = query + ONLY_USERS, (node_id, json.dumps(user_ids))
    rows = await db.execute_fetchall(query + ORDER_USERS, params)
    return [
        desired.UserState(
            user_id, uuid, password, wg_public_key, wg_preshared_key, wg_address,
            expires_at_ms, bool(admin_suspended), v1.Reason(enforced_reason),
            desired.engines_from_text(engines or ""),
        )
        for (
            user_id, uuid, password, wg_public_key, wg_preshared_key, wg_address,
            expires_at_ms, admin_suspended, enforced_reason, engines,
        ) in rows
    ]  # fmt: skip
