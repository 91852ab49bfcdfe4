"""Admin writes of SqliteStorage: nodes, plans, users, assignments, renewals.

Every method validates all of its input before writing, inside one
transaction, so a bad request raises a clear CentralError and changes
nothing. Each change is written to the audit log with who did it and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from edgeward.proto import v1

from . import credentials
from .admin_changes import AdminChangesMixin
from .admin_checks import check_client_side, check_public_address
from .admin_queries import AdminQueriesMixin
from .admin_records import NodeInbound
from .desired import Inbound
from .errors import Conflict, InvalidInput, NotFound
from .records import AuditEntry, Transaction, User, now_ms

if TYPE_CHECKING:
    import aiosqlite

NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Lowercase only: the proxy cores compare emails case-insensitively.
USER_ID = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
PLAN_ID = USER_ID
DAY_MS = 86_400_000


def _check_id(kind: str, pattern: re.Pattern[str], value: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidInput(f"invalid {kind} {value!r}: must match {pattern.pattern}")
    return value


def _check_bytes(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a whole number of bytes >= 0, got {value!r}")
    return value


def _check_future(expires_at_ms: int | None, at: int) -> int | None:
    if expires_at_ms is None:
        return None
    if isinstance(expires_at_ms, bool) or not isinstance(expires_at_ms, int):
        raise InvalidInput(f"expiry must be a time in ms, got {expires_at_ms!r}")
    if expires_at_ms <= at:
        raise InvalidInput(f"expiry {expires_at_ms} ms is in the past (now is {at} ms)")
    return expires_at_ms


class AdminMixin(AdminQueriesMixin, AdminChangesMixin):
    """Mixed into SqliteStorage; relies on its _write/_read/_audit/_enforce_in."""

    _write: Any
    _read: Any
    _audit: Any
    _enforce_in: Any
    _serving_nodes: Any
    _serialize_user_creation: Any
    wg_pool: str

    # ------------------------------------------------------------ nodes and plans

    async def add_node(
        self,
        node_id: str,
        inbounds: Sequence[Inbound | NodeInbound],
        *,
        actor: str,
        public_address: str = "",
    ) -> None:
        """Register a node with what it serves and, for client configs, the address and
        port clients connect to (plus link parameters: TLS, transport, WireGuard key)."""
        _check_id("node id", NODE_ID, node_id)
        served = [i if isinstance(i, NodeInbound) else NodeInbound(i) for i in inbounds]
        check_public_address(node_id, public_address)
        tags = [item.inbound.tag for item in served]
        if len(set(tags)) != len(tags):
            raise InvalidInput(f"node {node_id!r}: inbound tags must be unique, got {tags}")
        for item in served:
            inbound = item.inbound
            if not inbound.tag:
                raise InvalidInput(f"node {node_id!r}: an inbound has an empty tag")
            if inbound.engine == v1.Engine.PROXY and inbound.protocol == v1.Protocol.UNSPECIFIED:
                raise InvalidInput(
                    f"node {node_id!r}: proxy inbound {inbound.tag!r} needs a protocol"
                )
            if inbound.engine not in (v1.Engine.PROXY, v1.Engine.WIREGUARD):
                raise InvalidInput(f"node {node_id!r}: inbound {inbound.tag!r} has no engine")
            check_client_side(node_id, item)
        at = now_ms()
        async with self._write() as tx:
            if await _exists(tx.db, "SELECT 1 FROM nodes WHERE node_id = ?", node_id):
                raise Conflict(f"node {node_id!r} already exists")
            await tx.db.execute(
                "INSERT INTO nodes (node_id, created_at_ms, public_address) VALUES (?, ?, ?)",
                (node_id, at, public_address),
            )
            await tx.db.executemany(
                "INSERT INTO node_inbounds (node_id, tag, engine, protocol, flow, cipher, port,"
                " link_params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        node_id,
                        i.inbound.tag,
                        int(i.inbound.engine),
                        int(i.inbound.protocol),
                        i.inbound.flow,
                        i.inbound.cipher,
                        i.port,
                        i.params_json,
                    )
                    for i in served
                ],
            )
            await self._audit(
                tx, actor, "add-node", node_id, f"address={public_address!r} inbounds: {tags}", at
            )

    async def create_plan(
        self,
        plan_id: str,
        *,
        actor: str,
        data_limit_bytes: int | None = None,
        duration_days: int | None = None,
        engines: Sequence[v1.Engine] = (),
    ) -> None:
        _check_id("plan id", PLAN_ID, plan_id)
        for engine in engines:
            if engine not in (v1.Engine.PROXY, v1.Engine.WIREGUARD):
                raise InvalidInput(f"plan {plan_id!r}: unknown engine {engine!r}")
        engines_text = ",".join(str(int(e)) for e in sorted(set(engines)))
        _check_bytes("data limit", data_limit_bytes)
        if duration_days is not None and (
            isinstance(duration_days, bool)
            or not isinstance(duration_days, int)
            or duration_days <= 0
        ):
            raise InvalidInput(
                f"plan duration must be a whole number of days > 0, got {duration_days!r}"
            )
        at = now_ms()
        async with self._write() as tx:
            if await _exists(tx.db, "SELECT 1 FROM plans WHERE plan_id = ?", plan_id):
                raise Conflict(f"plan {plan_id!r} already exists")
            await tx.db.execute(
                "INSERT INTO plans (plan_id, data_limit_bytes, duration_days, engines)"
                " VALUES (?, ?, ?, ?)",
                (plan_id, data_limit_bytes, duration_days, engines_text),
            )
            await self._audit(
                tx, actor, "create-plan", plan_id,
                f"limit={data_limit_bytes} bytes, duration={duration_days} days", at,
            )  # fmt: skip

    # ------------------------------------------------------------ users

    async def create_user(
        self,
        user_id: str,
        *,
        actor: str,
        plan_id: str | None = None,
        data_limit_bytes: int | None = None,
        expires_at_ms: int | None = None,
        node_ids: Iterable[str] = (),
        uuid: str | None = None,
        why: str = "",
        at_ms: int | None = None,
    ) -> User:
        """A new user with fresh credentials, assigned to node_ids.

        A plan supplies the data limit and expiry (now + duration) unless given here.
        """
        at = at_ms if at_ms is not None else now_ms()
        _check_id("user id", USER_ID, user_id)
        _check_bytes("data limit", data_limit_bytes)
        _check_future(expires_at_ms, at)
        chosen_uuid = (
            credentials.normalise_uuid(uuid) if uuid is not None else credentials.new_uuid()
        )
        node_ids = sorted(set(node_ids))
        for node_id in node_ids:
            _check_id("node id", NODE_ID, node_id)
        private_key, public_key = credentials.wireguard_keypair()
        async with self._write() as tx:
            db = tx.db
            await self._serialize_user_creation(tx)
            if await _exists(db, "SELECT 1 FROM users WHERE user_id = ?", user_id):
                raise Conflict(f"user {user_id!r} already exists")
            if plan_id is not None:
                async with db.execute(
                    "SELECT data_limit_bytes, duration_days FROM plans WHERE plan_id = ?",
                    (plan_id,),
                ) as cursor:
                    plan = await cursor.fetchone()
                if plan is None:
                    raise NotFound(f"unknown plan {plan_id!r}")
                if data_limit_bytes is None:
                    data_limit_bytes = plan[0]
                if expires_at_ms is None and plan[1] is not None:
                    expires_at_ms = at + plan[1] * DAY_MS
            for node_id in node_ids:
                if not await _exists(db, "SELECT 1 FROM nodes WHERE node_id = ?", node_id):
                    raise NotFound(f"unknown node {node_id!r}")
            if await _exists(db, "SELECT 1 FROM credentials WHERE uuid = ?", chosen_uuid):
                raise Conflict(f"UUID {chosen_uuid} is already used by another user")
            async with db.execute("SELECT coalesce(max(wg_index), 0) + 1 FROM credentials") as c:
                (wg_index,) = await c.fetchone()
            address = credentials.wireguard_address(wg_index, self.wg_pool)
            await db.execute(
                "INSERT INTO users (user_id, plan_id, data_limit_bytes, expires_at_ms,"
                " created_at_ms) VALUES (?, ?, ?, ?, ?)",
                (user_id, plan_id, data_limit_bytes, expires_at_ms, at),
            )
            await db.execute(
                "INSERT INTO credentials (user_id, uuid, password, wg_private_key, wg_public_key,"
                " wg_preshared_key, wg_index, wg_address) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user_id, chosen_uuid, credentials.new_password(), private_key, public_key,
                    credentials.wireguard_preshared_key(), wg_index, address,
                ),
            )  # fmt: skip
            for node_id in node_ids:
                await self._assign_in(tx, user_id, node_id, at)
            await self._audit(
                tx, actor, "create-user", user_id,
                why or f"plan={plan_id} limit={data_limit_bytes} expires={expires_at_ms}"
                f" nodes={node_ids}", at,
            )  # fmt: skip
        return await self.get_user(user_id)

    async def assign(self, user_id: str, node_id: str, *, actor: str, why: str = "") -> None:
        at = now_ms()
        async with self._write() as tx:
            await self._require_user(tx.db, user_id)
            if not await _exists(tx.db, "SELECT 1 FROM nodes WHERE node_id = ?", node_id):
                raise NotFound(f"unknown node {node_id!r}")
            await self._assign_in(tx, user_id, node_id, at)
            await self._audit(tx, actor, "assign", user_id, why or f"to node {node_id}", at)

    async def _assign_in(self, tx: Transaction, user_id: str, node_id: str, at: int) -> None:
        await tx.db.execute(
            "INSERT INTO assignments (user_id, node_id, assigned_at_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, node_id) DO UPDATE SET removed_at_ms = NULL",
            (user_id, node_id, at),
        )
        tx.touch(node_id, user_id)

    async def unassign(self, user_id: str, node_id: str, *, actor: str, why: str = "") -> None:
        at = now_ms()
        async with self._write() as tx:
            await self._require_user(tx.db, user_id)
            async with tx.db.execute(
                "UPDATE assignments SET removed_at_ms = ? WHERE user_id = ? AND node_id = ?"
                " AND removed_at_ms IS NULL RETURNING 1",
                (at, user_id, node_id),
            ) as cursor:
                if await cursor.fetchone() is None:
                    raise NotFound(f"user {user_id!r} is not assigned to node {node_id!r}")
            # The node's lease returns to the pool: the node drops the user.
            await tx.db.execute(
                "DELETE FROM leases WHERE user_id = ? AND node_id = ?", (user_id, node_id)
            )
            tx.touch(node_id, user_id)
            await self._audit(tx, actor, "unassign", user_id, why or f"from node {node_id}", at)

    async def renew(
        self,
        user_id: str,
        *,
        actor: str,
        expires_at_ms: int | None = None,
        reset_usage: bool = False,
        why: str = "",
        at_ms: int | None = None,
    ) -> User:
        """A new period: a later expiry (given, or now + the plan's duration) and,
        with reset_usage, the quota counter back to zero. Resumes if nothing else holds."""
        at = at_ms if at_ms is not None else now_ms()
        _check_future(expires_at_ms, at)
        async with self._write() as tx:
            db = tx.db
            await self._require_user(db, user_id)
            if expires_at_ms is None:
                async with db.execute(
                    "SELECT p.duration_days FROM users u JOIN plans p ON p.plan_id = u.plan_id"
                    " WHERE u.user_id = ?",
                    (user_id,),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None or row[0] is None:
                    raise InvalidInput(
                        f"user {user_id!r} has no plan with a duration: give the new expiry"
                    )
                expires_at_ms = at + row[0] * DAY_MS
            await db.execute(
                "UPDATE users SET expires_at_ms = ?,"
                " quota_used_bytes = CASE WHEN ? THEN 0 ELSE quota_used_bytes END"
                " WHERE user_id = ?",
                (expires_at_ms, reset_usage, user_id),
            )
            if reset_usage:
                # Leases were carved from the old period's remainder; restart them.
                await db.execute("UPDATE leases SET used_bytes = 0 WHERE user_id = ?", (user_id,))
            await self._audit(
                tx, actor, "renew", user_id,
                why or f"expires={expires_at_ms} reset_usage={reset_usage}", at,
            )  # fmt: skip
            await self._touch_serving(tx, user_id)
            await self._enforce_in(tx, at, [user_id], actor)
        return await self.get_user(user_id)

    async def top_up(self, user_id: str, extra_bytes: int, *, actor: str, why: str = "") -> User:
        _check_bytes("top-up", extra_bytes)
        if extra_bytes == 0:
            raise InvalidInput("top-up must add at least 1 byte")
        at = now_ms()
        async with self._write() as tx:
            async with tx.db.execute(
                "SELECT data_limit_bytes FROM users WHERE user_id = ?", (user_id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"unknown user {user_id!r}")
            if row[0] is None:
                raise InvalidInput(f"user {user_id!r} has no data limit to top up")
            await tx.db.execute(
                "UPDATE users SET data_limit_bytes = data_limit_bytes + ? WHERE user_id = ?",
                (extra_bytes, user_id),
            )
            await self._audit(tx, actor, "top-up", user_id, why or f"+{extra_bytes} bytes", at)
            await self._touch_serving(tx, user_id)
            await self._enforce_in(tx, at, [user_id], actor)
        return await self.get_user(user_id)

    async def set_suspended(self, user_id: str, suspended: bool, *, actor: str, why: str) -> User:
        """An admin suspension (or its lifting); independent of quota/expiry enforcement."""
        if not why:
            raise InvalidInput("an admin suspension or resumption needs a reason")
        at = now_ms()
        async with self._write() as tx:
            await self._require_user(tx.db, user_id)
            await tx.db.execute(
                "UPDATE users SET admin_suspended = ? WHERE user_id = ?", (suspended, user_id)
            )
            action = v1.Action.SUSPEND if suspended else v1.Action.RESUME
            command = v1.Command(user_id, action, v1.Reason.ADMIN)
            for node_id in await self._serving_nodes(tx.db, user_id):
                tx.touch(node_id, user_id, command)
            await self._audit(tx, actor, "suspend" if suspended else "resume", user_id, why, at)
        return await self.get_user(user_id)

    async def _touch_serving(self, tx: Transaction, user_id: str) -> None:
        for node_id in await self._serving_nodes(tx.db, user_id):
            tx.touch(node_id, user_id)

    async def _require_user(self, db: aiosqlite.Connection, user_id: str) -> None:
        if not await _exists(db, "SELECT 1 FROM users WHERE user_id = ?", user_id):
            raise NotFound(f"unknown user {user_id!r}")

    # ------------------------------------------------------------ reads

    async def get_user(self, user_id: str) -> User:
        async with self._read() as db:
            async with db.execute(
                "SELECT u.user_id, u.plan_id, u.data_limit_bytes, u.expires_at_ms,"
                " u.admin_suspended, u.enforced_reason, u.uplink_bytes, u.downlink_bytes,"
                " u.quota_used_bytes, c.uuid, c.password, c.wg_private_key, c.wg_public_key,"
                " c.wg_address FROM users u JOIN credentials c ON c.user_id = u.user_id"
                " WHERE u.user_id = ?",
                (user_id,),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise NotFound(f"unknown user {user_id!r}")
            async with db.execute(
                "SELECT node_id FROM assignments WHERE user_id = ? AND removed_at_ms IS NULL"
                " ORDER BY node_id",
                (user_id,),
            ) as cursor:
                nodes = tuple(node_id for (node_id,) in await cursor.fetchall())
        return User(
            row[0], row[1], row[2], row[3], bool(row[4]), v1.Reason(row[5]), row[6], row[7],
            row[8], row[9], row[10], row[11], row[12], row[13], nodes,
        )  # fmt: skip

    async def audit_log(self, limit: int = 1000) -> list[AuditEntry]:
        async with (
            self._read() as db,
            db.execute(
                "SELECT id, at_ms, actor, action, subject, reason FROM audit_log"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ) as cursor,
        ):
            return [AuditEntry(*row) for row in reversed(await cursor.fetchall())]


async def _exists(db: aiosqlite.Connection, query: str, *params: object) -> bool:
    async with db.execute(query, params) as cursor:
        return await cursor.fetchone() is not None
