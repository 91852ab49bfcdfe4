"""Admin writes beyond the basics: delete, reissue, import, plan removal, subscriptions.

Same rules as central/admin.py: validate everything first, write in one
transaction, audit every change; a refused request changes nothing.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

from . import credentials
from .admin_records import ImportRow
from .errors import Conflict, InvalidInput, NotFound
from .records import now_ms

# Errors listed in one refusal of an import (the rest are counted).
MAX_LISTED_ERRORS = 20
USER_ID = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


class AdminChangesMixin:
    _write: Any
    _audit: Any
    _enforce_in: Any
    _serving_nodes: Any
    _require_user: Any
    _serialize_user_creation: Any
    wg_pool: str

    async def delete_plan(self, plan_id: str, *, actor: str) -> None:
        at = now_ms()
        async with self._write() as tx:
            async with tx.db.execute(
                "SELECT (SELECT count(*) FROM users WHERE plan_id = ?),"
                " EXISTS (SELECT 1 FROM plans WHERE plan_id = ?)",
                (plan_id, plan_id),
            ) as cursor:
                users, exists = await cursor.fetchone()
            if not exists:
                raise NotFound(f"unknown plan {plan_id!r}")
            if users:
                raise Conflict(
                    f"plan {plan_id!r} is used by {users} user(s): move or delete them first"
                )
            await tx.db.execute("DELETE FROM plans WHERE plan_id = ?", (plan_id,))
            await self._audit(tx, actor, "delete-plan", plan_id, "", at)

    async def delete_user(self, user_id: str, *, actor: str, why: str = "") -> list[str]:
        """Remove the user everywhere: every node it served drops it. Returns those nodes.
        Its usage history stays in the hourly table and the ledger."""
        at = now_ms()
        async with self._write() as tx:
            db = tx.db
            await self._require_user(db, user_id)
            nodes = await self._serving_nodes(db, user_id)
            for table in ("leases", "subscriptions", "assignments", "credentials", "users"):
                await db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            for node_id in nodes:
                tx.touch(node_id, user_id)
            await self._audit(tx, actor, "delete-user", user_id, why or f"nodes={nodes}", at)
        return nodes

    async def reissue(self, user_id: str, *, actor: str, why: str = "") -> None:
        """New UUID, password and WireGuard keys; every serving node replaces the old ones.
        Subscription tokens are replaced too (the old URL leaked with the credentials)."""
        at = now_ms()
        private_key, public_key = credentials.wireguard_keypair()
        async with self._write() as tx:
            db = tx.db
            await self._require_user(db, user_id)
            await db.execute(
                "UPDATE credentials SET uuid = ?, password = ?, wg_private_key = ?,"
                " wg_public_key = ?, wg_preshared_key = ? WHERE user_id = ?",
                (
                    credentials.new_uuid(), credentials.new_password(), private_key, public_key,
                    credentials.wireguard_preshared_key(), user_id,
                ),
            )  # fmt: skip
            async with db.execute(
                "UPDATE subscriptions SET revoked_at_ms = ? WHERE user_id = ?"
                " AND revoked_at_ms IS NULL RETURNING token",
                (at, user_id),
            ) as cursor:
                had_token = bool(await cursor.fetchall())
            if had_token:
                await self._new_token(db, user_id, at)
            for node_id in await self._serving_nodes(db, user_id):
                tx.touch(node_id, user_id)
            await self._audit(tx, actor, "reissue", user_id, why or "new credentials", at)

    # ------------------------------------------------------------ subscriptions

    async def rotate_subscription(
        self, user_id: str, *, actor: str, revoke_only: bool = False
    ) -> str | None:
        """Revoke the user's tokens and (unless revoke_only) issue a new one."""
        at = now_ms()
        async with self._write() as tx:
            await self._require_user(tx.db, user_id)
            await tx.db.execute(
                "UPDATE subscriptions SET revoked_at_ms = ? WHERE user_id = ?"
                " AND revoked_at_ms IS NULL",
                (at, user_id),
            )
            token = None if revoke_only else await self._new_token(tx.db, user_id, at)
            action = "revoke-subscription" if revoke_only else "rotate-subscription"
            await self._audit(tx, actor, action, user_id, "", at)
        return token

    async def ensure_token(self, user_id: str, *, actor: str) -> str:
        """The user's valid token, issuing the first one if there is none."""
        at = now_ms()
        async with self._write() as tx:
            await self._require_user(tx.db, user_id)
            async with tx.db.execute(
                "SELECT token FROM subscriptions WHERE user_id = ? AND revoked_at_ms IS NULL"
                " ORDER BY created_at_ms DESC LIMIT 1",
                (user_id,),
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                return row[0]
            token = await self._new_token(tx.db, user_id, at)
            await self._audit(tx, actor, "issue-subscription", user_id, "", at)
            return token

    async def _new_token(self, db: Any, user_id: str, at: int) -> str:
        token = secrets.token_urlsafe(24)
        await db.execute(
            "INSERT INTO subscriptions (token, user_id, created_at_ms) VALUES (?, ?, ?)",
            (token, user_id, at),
        )
        return token

    # ------------------------------------------------------------ import

    async def import_users(
        self,
        rows: Sequence[ImportRow],
        *,
        actor: str,
        node_ids: Sequence[str] = (),
        validate_only: bool = False,
        source: str = "",
    ) -> int:
        """Create every row's user (credentials kept as given) or none: all problems of
        the whole set are reported together. Expired or over-quota users are imported and
        suspended by the enforcement pass of the same transaction."""
        at = now_ms()
        errors = check_import_rows(rows)
        node_ids = sorted(set(node_ids))
        prepared = [
            (row, credentials.normalise_uuid(row.uuid) if row.uuid else credentials.new_uuid())
            for row in rows
        ] if not errors else []  # fmt: skip
        async with self._write() as tx:
            db = tx.db
            await self._serialize_user_creation(tx)
            if not errors:
                errors.extend(await _conflicts(db, prepared, node_ids))
            if errors:
                listed = errors[:MAX_LISTED_ERRORS]
                more = len(errors) - len(listed)
                raise InvalidInput(
                    f"import refused, nothing imported ({len(errors)} problem(s)):\n  "
                    + "\n  ".join(listed)
                    + (f"\n  ... and {more} more" if more else "")
                )
            if validate_only:
                return len(rows)
            async with db.execute("SELECT coalesce(max(wg_index), 0) FROM credentials") as c:
                (wg_index,) = await c.fetchone()
            plan_durations = await _plan_durations(db)
            users: list[tuple] = []
            creds: list[tuple] = []
            assigned: list[tuple[str, str, int]] = []
            for row, uuid in prepared:
                wg_index += 1
                private_key, public_key = credentials.wireguard_keypair()
                expires = row.expires_at_ms
                days = plan_durations.get(row.plan_id) if row.plan_id else None
                if expires is None and days:
                    expires = at + days * 86_400_000
                users.append(
                    (row.user_id, row.plan_id or None, row.data_limit_bytes, expires, at,
                     row.disabled, row.used_bytes)
                )  # fmt: skip
                creds.append(
                    (row.user_id, uuid, row.password or credentials.new_password(), private_key,
                     public_key, credentials.wireguard_preshared_key(), wg_index,
                     credentials.wireguard_address(wg_index, self.wg_pool))
                )  # fmt: skip
                assigned.extend((row.user_id, node_id, at) for node_id in node_ids)
            await db.executemany(
                "INSERT INTO users (user_id, plan_id, data_limit_bytes, expires_at_ms,"
                " created_at_ms, admin_suspended, quota_used_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                users,
            )
            await db.executemany(
                "INSERT INTO credentials (user_id, uuid, password, wg_private_key, wg_public_key,"
                " wg_preshared_key, wg_index, wg_address) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                creds,
            )
            await db.executemany(
                "INSERT INTO assignments (user_id, node_id, assigned_at_ms) VALUES (?, ?, ?)",
                assigned,
            )
            for user_id, node_id, _ in assigned:
                tx.touch(node_id, user_id)
            await db.executemany(
                "INSERT INTO audit_log (at_ms, actor, action, subject, reason)"
                " VALUES (?, ?, 'import-user', ?, ?)",
                [(at, actor, row.user_id, f"from {source or 'import'}") for row, _ in prepared],
            )
            await self._enforce_in(tx, at, [row.user_id for row in rows], actor)
        return len(rows)


def check_import_rows(rows: Sequence[ImportRow]) -> list[str]:
    """Every problem of the rows themselves (pure): ids, UUIDs, numbers, duplicates."""
    errors: list[str] = []
    seen_users: dict[str, int] = {}
    seen_uuids: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        where = f"row {number} ({row.user_id!r})"
        if not USER_ID.match(row.user_id or ""):
            errors.append(f"{where}: invalid user id: must match {USER_ID.pattern}")
        elif row.user_id in seen_users:
            errors.append(f"{where}: duplicate user id (also row {seen_users[row.user_id]})")
        else:
            seen_users[row.user_id] = number
        if row.uuid:
            try:
                uuid = credentials.normalise_uuid(row.uuid)
            except InvalidInput as e:
                errors.append(f"{where}: {e}")
            else:
                if uuid in seen_uuids:
                    errors.append(f"{where}: duplicate UUID {uuid} (also row {seen_uuids[uuid]})")
                seen_uuids.setdefault(uuid, number)
        for name, value in (("data limit", row.data_limit_bytes), ("used bytes", row.used_bytes)):
            if value is not None and (isinstance(value, bool) or value < 0):
                errors.append(f"{where}: {name} must be >= 0, got {value}")
        if row.expires_at_ms is not None and row.expires_at_ms < 0:
            errors.append(f"{where}: expiry must be >= 0 ms, got {row.expires_at_ms}")
    return errors


async def _conflicts(db: Any, prepared: list, node_ids: Sequence[str]) -> list[str]:
    """Problems with stored data: existing users/UUIDs, unknown plans and nodes."""
    errors = []
    user_ids = [row.user_id for row, _ in prepared]
    async with db.execute(
        "SELECT user_id FROM users WHERE user_id IN (SELECT value FROM json_each(?))",
        (json.dumps(user_ids),),
    ) as cursor:
        errors += [f"user {u!r} already exists" for (u,) in await cursor.fetchall()]
    async with db.execute(
        "SELECT uuid, user_id FROM credentials WHERE uuid IN (SELECT value FROM json_each(?))",
        (json.dumps([uuid for _, uuid in prepared]),),
    ) as cursor:
        errors += [
            f"UUID {uuid} is already used by user {owner!r}"
            for uuid, owner in await cursor.fetchall()
        ]
    plans = sorted({row.plan_id for row, _ in prepared if row.plan_id})
    async with db.execute("SELECT plan_id FROM plans") as cursor:
        known_plans = {p for (p,) in await cursor.fetchall()}
    errors += [f"unknown plan {p!r}" for p in plans if p not in known_plans]
    async with db.execute("SELECT node_id FROM nodes") as cursor:
        known_nodes = {n for (n,) in await cursor.fetchall()}
    errors += [f"unknown node {n!r}" for n in node_ids if n not in known_nodes]
    return errors


async def _plan_durations(db: Any) -> dict[str, int | None]:
    async with db.execute("SELECT plan_id, duration_days FROM plans") as cursor:
        return dict(await cursor.fetchall())
