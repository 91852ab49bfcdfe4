"""central's one writer: every change to the database goes through a Storage.

`Storage` is the interface callers use (stream handler, enforcement ticker,
the admin API to come); `SqliteStorage` implements it on an embedded SQLite
file through aiosqlite, WAL. A PostgreSQL implementation can follow behind the
same interface. Every write runs in one transaction; nodes whose desired state
changed get their revision bumped in that transaction and are notified after
the commit.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import aiosqlite

from edgeward.proto import v1

from . import desired, schema
from .admin import AdminMixin
from .decide import Decision, UserLimits, decide
from .ingest import aggregate, check_batch
from .leases import remaining_bytes, split_leases
from .notify import LocalNotifier, NodeEvent, Notifier
from .records import IngestResult, Transaction, now_ms

log = logging.getLogger("edgeward.central.storage")

SYSTEM_ACTOR = "central"
T = TypeVar("T")


class Storage(Protocol):
    """What central's parts may ask of the database (see SqliteStorage for semantics)."""

    notifier: Notifier

    async def close(self) -> None: ...
    async def add_node(
        self, node_id: str, inbounds: Sequence[desired.Inbound], *, actor: str
    ) -> None: ...
    async def node_known(self, node_id: str) -> bool: ...
    async def acked_seq(self, node_id: str) -> int: ...
    async def ingest(
        self, node_id: str, deltas: Sequence[v1.UsageDelta], at_ms: int | None = None
    ) -> IngestResult: ...
    async def enforce(
        self, at_ms: int | None = None, user_ids: Iterable[str] | None = None
    ) -> list[Decision]: ...
    async def snapshot(self, node_id: str) -> v1.DesiredSnapshot: ...
    async def desired_change(
        self, node_id: str, base_revision: int
    ) -> v1.DesiredChange | v1.DesiredSnapshot | None: ...
    async def grant_leases(
        self, node_id: str, user_ids: Iterable[str] | None = None, at_ms: int | None = None
    ) -> list[v1.Lease]: ...


class SqliteStorage(AdminMixin):
    """Storage on one SQLite file. Create with `await SqliteStorage.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, notifier: Notifier, wg_pool: str) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.notifier = notifier
        self.wg_pool = wg_pool

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        notifier: Notifier | None = None,
        wg_pool: str = "10.66.0.0/16",
    ) -> SqliteStorage:
        path = str(path)
        with sqlite3.connect(path, isolation_level=None) as plain:
            plain.execute("PRAGMA journal_mode=WAL")
            schema.migrate(plain)
        plain.close()
        db = await aiosqlite.connect(path, isolation_level=None)
        # FULL: an acknowledged batch must survive a power cut, not only a crash.
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        return cls(db, notifier or LocalNotifier(), wg_pool)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    # ------------------------------------------------------------ transactions

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Transaction]:
        """One write transaction; bumps touched nodes' revisions, notifies after commit."""
        async with self._lock:
            tx = Transaction(self._db)
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield tx
                events = await self._bump_revisions(tx)
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            # Published under the lock: a reader never sees a revision before its event.
            for event in events:
                self.notifier.publish(event)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                await self._db.execute("COMMIT")

    async def _bump_revisions(self, tx: Transaction) -> list[NodeEvent]:
        events = []
        for node_id in sorted(tx.touched):
            async with tx.db.execute(
                "UPDATE nodes SET revision = revision + 1 WHERE node_id = ? RETURNING revision",
                (node_id,),
            ) as cursor:
                (revision,) = await cursor.fetchone()
            await tx.db.executemany(
                "INSERT OR IGNORE INTO desired_log (node_id, revision, user_id) VALUES (?, ?, ?)",
                [(node_id, revision, user_id) for user_id in sorted(tx.touched[node_id])],
            )
            events.append(NodeEvent(node_id, revision, tuple(tx.commands.get(node_id, ()))))
        return events

    async def _audit(
        self, tx: Transaction, actor: str, action: str, subject: str, reason: str, at: int
    ) -> None:
        await tx.db.execute(
            "INSERT INTO audit_log (at_ms, actor, action, subject, reason) VALUES (?, ?, ?, ?, ?)",
            (at, actor, action, subject, reason),
        )

    async def record_local_decisions(
        self, node_id: str, decisions: Sequence[v1.LocalDecision]
    ) -> None:
        """Audit what a node decided on its own while central was away."""
        at = now_ms()
        async with self._write() as tx:
            for d in decisions:
                await self._audit(
                    tx, f"node:{node_id}", f"local-{v1.Action(d.action).name.lower()}",
                    d.user_id, f"{v1.Reason(d.reason).name.lower()} at {d.decided_at_ms} ms",
                    at,
                )  # fmt: skip

    # ------------------------------------------------------------ nodes

    async def node_known(self, node_id: str) -> bool:
        async with (
            self._read() as db,
            db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)) as cursor,
        ):
            return await cursor.fetchone() is not None

    async def acked_seq(self, node_id: str) -> int:
        async with (
            self._read() as db,
            db.execute("SELECT acked_seq FROM nodes WHERE node_id = ?", (node_id,)) as cursor,
        ):
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

    # ------------------------------------------------------------ ingest

    async def ingest(
        self, node_id: str, deltas: Sequence[v1.UsageDelta], at_ms: int | None = None
    ) -> IngestResult:
        """Apply a batch exactly once and commit; returns the ack to send.

        A delta whose (node_id, seq) is already in the ledger adds nothing, so
        replays and overlapping batches are harmless in any order. The caller
        sends the Ack (and the lease grants) only after this returns.
        """
        check_batch(deltas)
        at = at_ms if at_ms is not None else now_ms()
        async with self._write() as tx:
            db = tx.db
            async with db.execute(
                "SELECT acked_seq FROM nodes WHERE node_id = ?", (node_id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise LookupError(f"unknown node {node_id!r}")
            acked = row[0]
            if not deltas:
                return IngestResult(acked, 0, 0, set(), [])
            fresh: Sequence[v1.UsageDelta] = deltas
            if deltas[0].seq <= acked:
                async with db.execute(
                    "SELECT seq FROM deltas WHERE node_id = ? AND seq BETWEEN ? AND ?",
                    (node_id, deltas[0].seq, deltas[-1].seq),
                ) as cursor:
                    seen = {seq for (seq,) in await cursor.fetchall()}
                fresh = [delta for delta in deltas if delta.seq not in seen]
            new_acked = max(acked, deltas[-1].seq)
            if not fresh:
                return IngestResult(new_acked, 0, len(deltas), set(), [])
            user_ids = sorted({delta.user_id for delta in fresh})
            assignment = await self._assignment_states(db, node_id, user_ids)
            agg = aggregate(node_id, fresh, assignment)
            await db.executemany(
                "INSERT INTO deltas (node_id, seq, user_id, engine, epoch, uplink_bytes,"
                " downlink_bytes, sampled_at_ms, counted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                agg.ledger,
            )
            await db.executemany(
                "INSERT INTO usage_hourly (user_id, node_id, engine, hour_ms, uplink_bytes,"
                " downlink_bytes) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT"
                " (user_id, node_id, engine, hour_ms) DO UPDATE SET"
                " uplink_bytes = uplink_bytes + excluded.uplink_bytes,"
                " downlink_bytes = downlink_bytes + excluded.downlink_bytes",
                [(u, node_id, e, h, s[0], s[1]) for (u, e, h), s in agg.hourly.items()],
            )
            per_user = [(s[0], s[1], s[0] + s[1], u) for u, s in agg.per_user.items()]
            await db.executemany(
                "UPDATE users SET uplink_bytes = uplink_bytes + ?,"
                " downlink_bytes = downlink_bytes + ?, quota_used_bytes = quota_used_bytes + ?"
                " WHERE user_id = ?",
                per_user,
            )
            # Only users with a data limit hold leases (most fleets: few of them).
            async with db.execute(
                "SELECT user_id FROM leases WHERE node_id = ?"
                " AND user_id IN (SELECT value FROM json_each(?))",
                (node_id, json.dumps(list(agg.per_user))),
            ) as cursor:
                leased = {user_id for (user_id,) in await cursor.fetchall()}
            if leased:
                await db.executemany(
                    "UPDATE leases SET used_bytes = used_bytes + ?"
                    " WHERE user_id = ? AND node_id = ?",
                    [(t, user_id, node_id) for _, _, t, user_id in per_user if user_id in leased],
                )
            await db.execute(
                "UPDATE nodes SET acked_seq = ?, uplink_bytes = uplink_bytes + ?,"
                " downlink_bytes = downlink_bytes + ?, last_seen_ms = ? WHERE node_id = ?",
                (new_acked, agg.node_uplink, agg.node_downlink, at, node_id),
            )
            unassigned = sorted(u for u in agg.per_user if assignment.get(u) == "removed")
            if unassigned:
                log.warning(
                    "node %s reported usage of users no longer assigned to it (counted): %s",
                    node_id, ", ".join(unassigned[:20]),
                )  # fmt: skip
            for user_id in sorted(agg.rejected_users):
                log.warning("node %s reported usage of foreign user %s: ignored", node_id, user_id)
                await self._audit(
                    tx, f"node:{node_id}", "reject-usage", user_id,
                    "usage reported for a user never assigned to this node", at,
                )  # fmt: skip
            await self._enforce_in(tx, at, list(agg.per_user))
            limited = tx.limited  # users of this batch with a data limit
            leases = await self._grant_in(tx, node_id, limited, at) if limited else []
            return IngestResult(
                new_acked, len(fresh), len(deltas) - len(fresh), agg.rejected_users, leases
            )

    async def _assignment_states(
        self, db: aiosqlite.Connection, node_id: str, user_ids: list[str]
    ) -> dict[str, str]:
        """user -> "active" | "removed" for the given users with any assignment to the node."""
        async with db.execute(
            "SELECT user_id, removed_at_ms IS NULL FROM assignments"
            " WHERE user_id IN (SELECT value FROM json_each(?)) AND node_id = ?",
            (json.dumps(user_ids), node_id),
        ) as cursor:
            return {
                user_id: "active" if active else "removed"
                for user_id, active in await cursor.fetchall()
            }

    # ------------------------------------------------------------ enforcement

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
        query = (
            "SELECT user_id, data_limit_bytes, expires_at_ms, enforced_reason, quota_used_bytes"
            " FROM users"
        )
        params: tuple = ()
        if user_ids is not None:
            query += " WHERE user_id IN (SELECT value FROM json_each(?))"
            params = (json.dumps(user_ids),)
        query += " AND" if user_ids is not None else " WHERE"
        query += " (data_limit_bytes IS NOT NULL OR expires_at_ms IS NOT NULL OR enforced_reason)"
        async with tx.db.execute(query, params) as cursor:
            rows = await cursor.fetchall()
        limits = {row[0]: UserLimits(row[1], row[2], v1.Reason(row[3])) for row in rows}
        usage = {row[0]: row[4] for row in rows}
        tx.limited = [row[0] for row in rows if row[1] is not None]
        decisions = decide(usage, limits, at)
        for decision in decisions:
            suspended = decision.action == v1.Action.SUSPEND
            await tx.db.execute(
                "UPDATE users SET enforced_reason = ? WHERE user_id = ?",
                (int(decision.reason) if suspended else 0, decision.user_id),
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

    async def _serving_nodes(self, db: aiosqlite.Connection, user_id: str) -> list[str]:
        async with db.execute(
            "SELECT node_id FROM assignments WHERE user_id = ? AND removed_at_ms IS NULL"
            " ORDER BY node_id",
            (user_id,),
        ) as cursor:
            return [node_id for (node_id,) in await cursor.fetchall()]

    # ------------------------------------------------------------ leases

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
        query = (
            "SELECT u.user_id, u.data_limit_bytes, u.quota_used_bytes, a.node_id,"
            " l.lease_id, l.granted_bytes - l.used_bytes"
            " FROM users u JOIN assignments a ON a.user_id = u.user_id"
            " AND a.removed_at_ms IS NULL"
            " LEFT JOIN leases l ON l.user_id = u.user_id AND l.node_id = a.node_id"
            " WHERE u.data_limit_bytes IS NOT NULL AND u.user_id IN"
            " (SELECT user_id FROM assignments WHERE node_id = ? AND removed_at_ms IS NULL)"
        )
        params: tuple = (node_id,)
        if user_ids is not None:
            query += " AND u.user_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(user_ids),)
        async with tx.db.execute(query, params) as cursor:
            rows = await cursor.fetchall()
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
            await tx.db.execute(
                "INSERT INTO leases (user_id, node_id, lease_id, granted_bytes, used_bytes,"
                " granted_at_ms) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (user_id, node_id)"
                " DO UPDATE SET lease_id = excluded.lease_id,"
                " granted_bytes = excluded.granted_bytes, used_bytes = 0,"
                " granted_at_ms = excluded.granted_at_ms",
                (user_id, node_id, last_id + 1, new, at),
            )
            grants.append(v1.Lease(user_id=user_id, bytes=new, lease_id=last_id + 1))
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

    # ------------------------------------------------------------ desired state

    async def snapshot(self, node_id: str) -> v1.DesiredSnapshot:
        async with self._read() as db:
            revision = await self._revision(db, node_id)
            users = await self._user_states(db, node_id, None)
            inbounds = await self._inbounds(db, node_id)
        return desired.snapshot(revision, users, inbounds)

    async def desired_change(
        self, node_id: str, base_revision: int
    ) -> v1.DesiredChange | v1.DesiredSnapshot | None:
        """What a node holding base_revision needs: None if current, else a change
        (users changed since base), or a snapshot if base is not one we issued."""
        async with self._read() as db:
            revision = await self._revision(db, node_id)
            if base_revision == revision:
                return None
            if base_revision > revision:
                users = await self._user_states(db, node_id, None)
                return desired.snapshot(revision, users, await self._inbounds(db, node_id))
            async with db.execute(
                "SELECT DISTINCT user_id FROM desired_log WHERE node_id = ? AND revision > ?",
                (node_id, base_revision),
            ) as cursor:
                changed = [user_id for (user_id,) in await cursor.fetchall()]
            users = await self._user_states(db, node_id, changed)
            inbounds = await self._inbounds(db, node_id)
        present = {user.user_id for user in users}
        removed = [user_id for user_id in changed if user_id not in present]
        return desired.change(revision, base_revision, users, removed, inbounds)

    async def _revision(self, db: aiosqlite.Connection, node_id: str) -> int:
        async with db.execute("SELECT revision FROM nodes WHERE node_id = ?", (node_id,)) as c:
            row = await c.fetchone()
        if row is None:
            raise LookupError(f"unknown node {node_id!r}")
        return row[0]

    async def _inbounds(self, db: aiosqlite.Connection, node_id: str) -> list[desired.Inbound]:
        async with db.execute(
            "SELECT tag, engine, protocol, flow, cipher FROM node_inbounds WHERE node_id = ?"
            " ORDER BY tag",
            (node_id,),
        ) as cursor:
            return [
                desired.Inbound(tag, v1.Engine(engine), v1.Protocol(protocol), flow, cipher)
                for tag, engine, protocol, flow, cipher in await cursor.fetchall()
            ]

    async def _user_states(
        self, db: aiosqlite.Connection, node_id: str, user_ids: list[str] | None
    ) -> list[desired.UserState]:
        query = (
            "SELECT u.user_id, c.uuid, c.password, c.wg_public_key, c.wg_preshared_key,"
            " c.wg_address, u.expires_at_ms, u.admin_suspended, u.enforced_reason"
            " FROM assignments a JOIN users u ON u.user_id = a.user_id"
            " JOIN credentials c ON c.user_id = a.user_id"
            " WHERE a.node_id = ? AND a.removed_at_ms IS NULL"
        )
        params: tuple = (node_id,)
        if user_ids is not None:
            query += " AND a.user_id IN (SELECT value FROM json_each(?))"
            params += (json.dumps(user_ids),)
        async with db.execute(query + " ORDER BY u.user_id", params) as cursor:
            rows = await cursor.fetchall()
        return [
            desired.UserState(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                bool(row[7]),
                v1.Reason(row[8]),
            )
            for row in rows
        ]


def _decision_reason(decision: Decision, used: int, limits: UserLimits) -> str:
    reason = decision.reason
    if decision.action == v1.Action.RESUME:
        return f"{reason.name.lower()} no longer applies (used {used} bytes)"
    if reason == v1.Reason.EXPIRED:
        return f"expired at {limits.expires_at_ms} ms"
    return f"quota exhausted: used {used} of {limits.data_limit_bytes} bytes"


def _shielded(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run the call to completion even if the caller is cancelled.

    grpclib cancels a handler when its client goes away; a storage call cut in
    the middle would leave a transaction open on the shared connection, or
    commit without notifying. Shielded, the transaction always finishes (and
    the caller, if cancelled, simply does not see the result: same as a crash
    between commit and ack).
    """

    @functools.wraps(method)
    async def run(*args: object, **kwargs: object) -> T:
        task = asyncio.ensure_future(method(*args, **kwargs))
        task.add_done_callback(_consume_result)
        return await asyncio.shield(task)

    return run


def _consume_result(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("storage call finished with %r after its caller left", task.exception())


for _name in dir(SqliteStorage):
    _method = getattr(SqliteStorage, _name)
    if not _name.startswith("_") and inspect.iscoroutinefunction(_method) and _name != "open":
        setattr(SqliteStorage, _name, _shielded(_method))
