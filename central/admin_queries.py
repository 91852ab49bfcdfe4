"""Admin reads of SqliteStorage: nodes, plans, users, usage, explain facts, client material."""

from __future__ import annotations

import json
from typing import Any

from edgeward.proto import v1

from .admin_records import (
    ClientCredentials,
    NodeInbound,
    NodeRow,
    Plan,
    UsageRow,
    UserNodeFacts,
)
from .desired import Inbound, engines_from_text
from .errors import InvalidInput, NotFound
from .records import AuditEntry, User

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
GROUPS = ("user", "node", "hour", "day")

USER_COLUMNS = (
    "u.user_id, u.plan_id, u.data_limit_bytes, u.expires_at_ms, u.admin_suspended,"
    " u.enforced_reason, u.uplink_bytes, u.downlink_bytes, u.quota_used_bytes, c.uuid,"
    " c.password, c.wg_private_key, c.wg_public_key, c.wg_address,"
    " (SELECT group_concat(node_id, ',') FROM (SELECT node_id FROM assignments a"
    "  WHERE a.user_id = u.user_id AND a.removed_at_ms IS NULL ORDER BY node_id) assigned)"
)  # PostgreSQL needs the subquery's alias; SQLite accepts it


def user_from_row(row: Any) -> User:
    nodes = tuple(row[14].split(",")) if row[14] else ()
    return User(
        row[0], row[1], row[2], row[3], bool(row[4]), v1.Reason(row[5]), row[6], row[7],
        row[8], row[9], row[10], row[11], row[12], row[13], nodes,
    )  # fmt: skip


class AdminQueriesMixin:
    _read: Any

    # ------------------------------------------------------------ nodes

    async def list_nodes(self, node_id: str | None = None) -> list[NodeRow]:
        query = (
            "SELECT n.node_id, n.public_address, n.uplink_bytes, n.downlink_bytes,"
            " n.created_at_ms, n.last_seen_ms, n.revision,"
            " (SELECT count(*) FROM assignments a WHERE a.node_id = n.node_id"
            "  AND a.removed_at_ms IS NULL) FROM nodes n"
        )
        params: tuple = ()
        if node_id is not None:
            query += " WHERE n.node_id = ?"
            params = (node_id,)
        async with self._read() as db:
            async with db.execute(query + " ORDER BY n.node_id", params) as cursor:
                nodes = await cursor.fetchall()
            async with db.execute(
                "SELECT node_id, tag, engine, protocol, flow, cipher, port, link_params"
                " FROM node_inbounds ORDER BY node_id, tag"
            ) as cursor:
                inbound_rows = await cursor.fetchall()
        if node_id is not None and not nodes:
            raise NotFound(f"unknown node {node_id!r}")
        inbounds: dict[str, list[NodeInbound]] = {}
        for nid, tag, engine, protocol, flow, cipher, port, link_params in inbound_rows:
            inbound = Inbound(tag, v1.Engine(engine), v1.Protocol(protocol), flow, cipher)
            served = NodeInbound(inbound, port, json.loads(link_params))
            inbounds.setdefault(nid, []).append(served)
        return [
            NodeRow(
                row[0],
                row[1],
                tuple(inbounds.get(row[0], ())),
                row[7],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
            )
            for row in nodes
        ]

    async def get_node(self, node_id: str) -> NodeRow:
        return (await self.list_nodes(node_id))[0]

    # ------------------------------------------------------------ plans

    async def list_plans(self, plan_id: str | None = None) -> list[Plan]:
        query = (
            "SELECT p.plan_id, p.data_limit_bytes, p.duration_days, p.engines,"
            " (SELECT count(*) FROM users u WHERE u.plan_id = p.plan_id) FROM plans p"
        )
        params: tuple = ()
        if plan_id is not None:
            query += " WHERE p.plan_id = ?"
            params = (plan_id,)
        async with self._read() as db, db.execute(query + " ORDER BY p.plan_id", params) as c:
            rows = await c.fetchall()
        if plan_id is not None and not rows:
            raise NotFound(f"unknown plan {plan_id!r}")
        return [Plan(r[0], r[1], r[2], engines_from_text(r[3]), r[4]) for r in rows]

    async def get_plan(self, plan_id: str) -> Plan:
        return (await self.list_plans(plan_id))[0]

    # ------------------------------------------------------------ users

    async def list_users(self, node_id: str = "", plan_id: str = "") -> list[User]:
        query = (
            f"SELECT {USER_COLUMNS} FROM users u JOIN credentials c ON c.user_id = u.user_id"
            " WHERE 1 = 1"  # a boolean on PostgreSQL too, not an integer
        )
        params: list = []
        if node_id:
            query += (
                " AND u.user_id IN (SELECT user_id FROM assignments WHERE node_id = ?"
                " AND removed_at_ms IS NULL)"
            )
            params.append(node_id)
        if plan_id:
            query += " AND u.plan_id = ?"
            params.append(plan_id)
        async with self._read() as db, db.execute(query + " ORDER BY u.user_id", params) as c:
            return [user_from_row(row) for row in await c.fetchall()]

    async def counts(self) -> tuple[int, int]:
        """(nodes, users)"""
        async with self._read() as db:
            async with db.execute("SELECT count(*) FROM nodes") as c:
                (nodes,) = await c.fetchone()
            async with db.execute("SELECT count(*) FROM users") as c:
                (users,) = await c.fetchone()
        return nodes, users

    async def client_credentials(self, user_id: str) -> ClientCredentials:
        async with (
            self._read() as db,
            db.execute(
                "SELECT user_id, uuid, password, wg_private_key, wg_preshared_key, wg_address"
                " FROM credentials WHERE user_id = ?",
                (user_id,),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"unknown user {user_id!r}")
        return ClientCredentials(*row)

    # ------------------------------------------------------------ usage

    async def usage(
        self,
        *,
        user_id: str = "",
        node_id: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        group_by: str = "user",
    ) -> list[UsageRow]:
        """Traffic from the hourly table, grouped; hours are whole (a period's edges
        round down to the hour the traffic was sampled in)."""
        group_by = group_by or "user"
        if group_by not in GROUPS:
            raise InvalidInput(f"usage: group by one of {', '.join(GROUPS)}, not {group_by!r}")
        if since_ms < 0 or until_ms < 0 or (until_ms and until_ms <= since_ms):
            raise InvalidInput(f"usage: bad period since={since_ms} until={until_ms}")
        key = {
            "user": "user_id, '', 0",
            "node": "'', node_id, 0",
            "hour": "'', '', hour_ms",
            "day": f"'', '', hour_ms - hour_ms % {DAY_MS}",
        }[group_by]
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        for column, value in (("user_id", user_id), ("node_id", node_id)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if since_ms:
            where.append("hour_ms >= ?")
            params.append(since_ms - since_ms % HOUR_MS)
        if until_ms:
            where.append("hour_ms < ?")
            params.append(until_ms)
        query = (
            # PostgreSQL's sum of BIGINT is NUMERIC (a Decimal): cast it back to an integer.
            f"SELECT {key}, CAST(sum(uplink_bytes) AS BIGINT),"
            " CAST(sum(downlink_bytes) AS BIGINT) FROM usage_hourly"
            f" WHERE {' AND '.join(where)} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        async with self._read() as db, db.execute(query, params) as cursor:
            return [UsageRow(*row) for row in await cursor.fetchall()]

    # ------------------------------------------------------------ explain

    async def user_node_facts(self, user_id: str) -> list[UserNodeFacts]:
        async with (
            self._read() as db,
            db.execute(
                "SELECT a.node_id, n.revision,"
                " (SELECT max(revision) FROM desired_log d WHERE d.node_id = a.node_id"
                "  AND d.user_id = a.user_id),"
                " (SELECT max(0, granted_bytes - used_bytes) FROM leases l"
                "  WHERE l.node_id = a.node_id AND l.user_id = a.user_id),"
                " (SELECT CAST(coalesce(sum(uplink_bytes), 0) AS BIGINT) FROM usage_hourly h"
                "  WHERE h.node_id = a.node_id AND h.user_id = a.user_id),"
                " (SELECT CAST(coalesce(sum(downlink_bytes), 0) AS BIGINT) FROM usage_hourly h"
                "  WHERE h.node_id = a.node_id AND h.user_id = a.user_id)"
                " FROM assignments a JOIN nodes n ON n.node_id = a.node_id"
                " WHERE a.user_id = ? AND a.removed_at_ms IS NULL ORDER BY a.node_id",
                (user_id,),
            ) as cursor,
        ):
            return [
                UserNodeFacts(r[0], r[1], r[2] or 0, r[3], r[4], r[5])
                for r in await cursor.fetchall()
            ]

    async def audit_of(self, subject: str, limit: int = 5) -> list[AuditEntry]:
        async with (
            self._read() as db,
            db.execute(
                "SELECT id, at_ms, actor, action, subject, reason FROM audit_log"
                " WHERE subject = ? ORDER BY id DESC LIMIT ?",
                (subject, limit),
            ) as cursor,
        ):
            return [AuditEntry(*row) for row in reversed(await cursor.fetchall())]

    # ------------------------------------------------------------ subscriptions

    async def user_of_token(self, token: str) -> str | None:
        async with (
            self._read() as db,
            db.execute(
                "SELECT user_id FROM subscriptions WHERE token = ? AND revoked_at_ms IS NULL",
                (token,),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return row[0] if row else None

    async def active_token(self, user_id: str) -> str | None:
        async with (
            self._read() as db,
            db.execute(
                "SELECT token FROM subscriptions WHERE user_id = ? AND revoked_at_ms IS NULL"
                " ORDER BY created_at_ms DESC LIMIT 1",
                (user_id,),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return row[0] if row else None
