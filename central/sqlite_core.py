"""The SQLite storage's core: the connection, transactions, revisions, the audit log.

Every write goes through `_write()`: one `BEGIN IMMEDIATE` transaction under
one lock (one writer); nodes whose desired state changed get their revision
bumped inside it and are notified after the commit. The concern modules
(sqlite_ingest, sqlite_enforce, sqlite_desired, admin) are mixins over this
core; each keeps its SQL next to the code that runs it, so a PostgreSQL
storage replaces them module by module behind the same `Storage` protocol.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from edgeward.proto import v1

from . import schema
from .notify import LocalNotifier, NodeEvent, Notifier
from .records import Transaction, now_ms

T = TypeVar("T")

BUMP_REVISION = "UPDATE nodes SET revision = revision + 1 WHERE node_id = ? RETURNING revision"
LOG_CHANGED_USERS = (
    "INSERT OR IGNORE INTO desired_log (node_id, revision, user_id) VALUES (?, ?, ?)"
)
APPEND_AUDIT = (
    "INSERT INTO audit_log (at_ms, actor, action, subject, reason) VALUES (?, ?, ?, ?, ?)"
)


async def run_sync(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3_connection, *args) on aiosqlite's own thread, in one hop.

    Each awaited aiosqlite call is a thread round trip (~0.1 ms, more on a busy
    loop); a usage batch needs a dozen statements, so its hot path runs as one
    plain function here. Uses aiosqlite's internal queue (`_execute`): the only
    way to reach its thread, which owns the sqlite3 connection.
    """
    return await db._execute(fn, db._conn, *args)


class SqliteCore:
    """Connection, transactions and audit of SqliteStorage (see storage.py)."""

    # One central per SQLite file: node connection state stays in memory (link_store.py).
    shares_replicas = False

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
    ) -> Self:
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

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Transaction]:
        """One write transaction; bumps touched nodes' revisions, notifies after commit."""
        async with self._lock:
            tx = Transaction(self._db)
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield tx
                events = await self._bump_revisions(tx) if tx.touched else []
                await self._db.execute("COMMIT")
            except BaseException:
                # SQLite ends the transaction itself on some errors (SQLITE_FULL, I/O
                # errors): a ROLLBACK then would fail and hide the error.
                if self._db.in_transaction:
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
            async with tx.db.execute(BUMP_REVISION, (node_id,)) as cursor:
                row = await cursor.fetchone()
            assert row is not None, f"touched node {node_id!r} does not exist"
            (revision,) = row
            await tx.db.executemany(
                LOG_CHANGED_USERS,
                [(node_id, revision, user_id) for user_id in sorted(tx.touched[node_id])],
            )
            events.append(NodeEvent(node_id, revision, tuple(tx.commands.get(node_id, ()))))
        return events

    async def end_other_streams(self, node_id: str, before_ms: int) -> None:
        """Other replicas end the node's streams begun before before_ms (one central
        per SQLite file: none to tell)."""

    async def _serialize_enforcement(self, tx: Transaction) -> None:
        """Enforcement passes read and decide one after the other (BEGIN IMMEDIATE does)."""

    async def _serialize_grants(
        self, tx: Transaction, node_id: str, user_ids: list[str] | None
    ) -> None:
        """Lease grants of a user read the others' holdings and grant one after the
        other (BEGIN IMMEDIATE does)."""

    async def _serialize_user_creation(self, tx: Transaction) -> None:
        """User creations check ids and allocate addresses one after the other (BEGIN
        IMMEDIATE does)."""

    async def _audit(
        self, tx: Transaction, actor: str, action: str, subject: str, reason: str, at: int
    ) -> None:
        await tx.db.execute(APPEND_AUDIT, (at, actor, action, subject, reason))

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
