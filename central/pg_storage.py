"""central's Storage on PostgreSQL (asyncpg): `await PgStorage.open("postgresql://...")`.

The same concern mixins as SqliteStorage run on it through pg_dialect's
connection adapter; only what differs is here: the connection and its
transactions (PostgreSQL's own locking instead of BEGIN IMMEDIATE), the
migrations (pg_schema), the ingest hot path (pg_ingest: COPY + unnest) and
the monthly partitions of the rollups (pg_retention).

One connection and one lock per replica, like SQLite's one writer; across
replicas PostgreSQL's row locks order the writers (pg_ingest locks the node's
row first). Every write that changes a node's desired state also NOTIFYs
inside its transaction (pg_notify), so another replica listening on the same
database hears of it when it commits; `open(dsn, listen=True)` starts such a
listener (central's server does; a lone storage in a test need not).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import asyncpg

from edgeward.proto.usage_codec import UsageDelta

from . import pg_ingest, pg_notify, pg_schema
from .admin import AdminMixin
from .ingest import Applied
from .link_store import LinkStoreMixin
from .notify import LocalNotifier, NodeEvent, Notifier
from .pg_dialect import PgConnection
from .pg_retention import PgRetentionMixin
from .records import Transaction
from .sqlite_core import SqliteCore
from .sqlite_desired import DesiredMixin
from .sqlite_enforce import EnforcementMixin
from .sqlite_ingest import IngestMixin
from .storage import shield_public_methods

ENFORCE_LOCK = 0x6564_6778  # pg_advisory_xact_lock key of enforcement passes
USERS_LOCK = 0x6564_6779  # ... and of user creations (ids, UUIDs, WireGuard addresses)
LEASES_LOCK = 0x6564_677A  # ... and, with each user's hashtext, of that user's lease grants
# One advisory lock per user, taken in user order (the OFFSET 0 subquery keeps the
# order): grants of different users never wait for each other, nor deadlock.
LOCK_USERS_LEASES = (
    "SELECT count(pg_advisory_xact_lock($1, hashtext(user_id)))"
    " FROM (SELECT user_id FROM unnest($2::text[]) AS u(user_id) ORDER BY user_id OFFSET 0) s"
)
LOCK_NODE_USERS_LEASES = (
    "SELECT count(pg_advisory_xact_lock($1, hashtext(user_id))) FROM (SELECT user_id"
    " FROM assignments WHERE node_id = $2 AND removed_at_ms IS NULL ORDER BY user_id OFFSET 0) s"
)


class PgCore(SqliteCore):
    """SqliteCore's transactions and audit, on an asyncpg connection."""

    shares_replicas = True  # several central replicas may use the database at once

    def __init__(self, conn: Any, notifier: Notifier, wg_pool: str) -> None:
        super().__init__(PgConnection(conn), notifier, wg_pool)  # type: ignore[arg-type]
        self._conn = conn
        self._listener: pg_notify.PgNotifier | None = None  # owned: closed with the storage

    @classmethod
    async def open(  # type: ignore[override]
        cls,
        dsn: str,
        *,
        notifier: Notifier | None = None,
        wg_pool: str = "10.66.0.0/16",
        listen: bool = False,
    ) -> Self:
        """listen: hear other replicas' changes (a PgNotifier on its own connection)."""
        conn = await asyncpg.connect(dsn, timeout=pg_notify.CONNECT_SECONDS)
        listener = None
        try:
            await pg_schema.migrate(conn)
            if listen and notifier is None:
                listener = await pg_notify.PgNotifier.start(dsn, {conn.get_server_pid()})
        except BaseException:
            await conn.close()
            raise
        storage = cls(conn, notifier or listener or LocalNotifier(), wg_pool)
        storage._listener = listener
        return storage

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            tx = Transaction(self._db)  # type: ignore[arg-type]
            async with self._conn.transaction():
                yield tx
                events = await self._bump_revisions(tx) if tx.touched else []
                # Delivered to the other replicas when (and only if) this commits.
                await pg_notify.notify_in_transaction(self._conn, events)
            for event in events:
                self.notifier.publish(event)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Any]:
        async with self._lock, self._conn.transaction(isolation="repeatable_read", readonly=True):
            yield self._db

    async def end_other_streams(self, node_id: str, before_ms: int) -> None:
        """Other replicas end the node's streams begun before before_ms (this one's own
        are the caller's business: the notification is not delivered here)."""
        event = NodeEvent(node_id, 0, stop_before_ms=before_ms)
        async with self._lock:
            await pg_notify.notify_in_transaction(self._conn, [event])

    async def _serialize_enforcement(self, tx: Transaction) -> None:
        """Replicas' enforcement passes one after the other: each reads what the previous
        committed, so a suspension is decided (and audited, and pushed) once."""
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", ENFORCE_LOCK)

    async def _serialize_grants(
        self, tx: Transaction, node_id: str, user_ids: list[str] | None
    ) -> None:
        """Grants of one user on several replicas one after the other: each reads what
        the other nodes hold after the previous grant, so the leases never sum to more
        than the user's remaining bytes."""
        if user_ids is None:
            await self._conn.execute(LOCK_NODE_USERS_LEASES, LEASES_LOCK, node_id)
        else:
            await self._conn.execute(LOCK_USERS_LEASES, LEASES_LOCK, user_ids)

    async def _serialize_user_creation(self, tx: Transaction) -> None:
        """Replicas' user creations one after the other: each sees the users, UUIDs and
        WireGuard addresses the previous committed (a clear Conflict, no collision)."""
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", USERS_LOCK)

    async def _apply_usage(
        self, tx: Transaction, node_id: str, deltas: Sequence[UsageDelta], at: int
    ) -> Applied:
        return await pg_ingest.apply_usage(self._conn, node_id, deltas, at)

    async def _prune_ledger(self, tx: Transaction, before_ms: int) -> int:
        return await pg_ingest.prune_ledger(self._conn, before_ms)


class PgStorage(
    PgRetentionMixin,
    PgCore,
    IngestMixin,
    EnforcementMixin,
    DesiredMixin,
    AdminMixin,
    LinkStoreMixin,
):
    """Storage on PostgreSQL (see the module docstring)."""


shield_public_methods(PgStorage)

__all__ = ["PgStorage"]
