"""central's one writer: every change to the database goes through a Storage.

`Storage` is the interface callers use (stream handler, enforcement ticker,
admin); `SqliteStorage` implements it on an embedded SQLite file through
aiosqlite, WAL. It is assembled from one module per concern, each holding its
own SQL:

  sqlite_core     connection, transactions, revision bumps, audit log
  sqlite_ingest   exactly-once usage ingest, node and usage reads
  sqlite_fold     the ledger committed first, folded into totals later
  sqlite_enforce  decide() applied, quota leases
  sqlite_desired  node snapshots and changes
  admin           nodes, plans, users, assignments, renewals
  link_store      node connection state shared by replicas (PostgreSQL)
  sqlite_retention  pruning of old hourly rollups (retention.py)

A PostgreSQL implementation provides the same protocol with its own modules;
callers only ever see `Storage`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta

from . import desired
from .admin import AdminMixin
from .decide import Decision
from .link_store import LinkStoreMixin
from .notify import Notifier
from .records import IngestResult
from .retention import RollupPrune
from .sqlite_core import SqliteCore
from .sqlite_desired import DesiredMixin
from .sqlite_enforce import SYSTEM_ACTOR, EnforcementMixin
from .sqlite_fold import FoldMixin
from .sqlite_ingest import IngestMixin
from .sqlite_retention import RetentionMixin

__all__ = ["SYSTEM_ACTOR", "SqliteStorage", "Storage"]

log = logging.getLogger("edgeward.central.storage")
T = TypeVar("T")


class Storage(Protocol):
    """What central's parts may ask of the database (see SqliteStorage for semantics)."""

    notifier: Notifier
    shares_replicas: bool  # several central replicas may use the database at once

    async def close(self) -> None: ...
    async def add_node(
        self, node_id: str, inbounds: Sequence[desired.Inbound], *, actor: str
    ) -> None: ...
    async def node_known(self, node_id: str) -> bool: ...
    async def acked_seq(self, node_id: str) -> int: ...
    async def ingest(
        self,
        node_id: str,
        deltas: Sequence[UsageDelta],
        at_ms: int | None = None,
        *,
        defer: bool = False,
        payload: bytes | None = None,
    ) -> IngestResult: ...
    async def ingest_many(
        self,
        node_id: str,
        batches: Sequence[tuple[Sequence[UsageDelta], bytes | None]],
        at_ms: int | None = None,
        *,
        defer: bool = False,
    ) -> list[IngestResult]: ...
    async def record_local_decisions(
        self, node_id: str, decisions: Sequence[v1.LocalDecision]
    ) -> None: ...
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
    async def end_other_streams(self, node_id: str, before_ms: int) -> None: ...
    async def prepare_rollups(self, at_ms: int) -> list[str]: ...
    async def prune_rollups(self, before_ms: int) -> RollupPrune: ...
    async def prune_ledger(self, before_ms: int) -> int: ...


class SqliteStorage(
    FoldMixin,
    IngestMixin,
    EnforcementMixin,
    DesiredMixin,
    AdminMixin,
    LinkStoreMixin,
    RetentionMixin,
    SqliteCore,
):
    """Storage on one SQLite file. Create with `await SqliteStorage.open(path)`."""


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


def shield_public_methods(cls: type) -> None:
    """Wrap every public coroutine method of a storage class (but open) with _shielded."""
    for name in dir(cls):
        method = getattr(cls, name)
        if not name.startswith("_") and inspect.iscoroutinefunction(method) and name != "open":
            setattr(cls, name, _shielded(method))


shield_public_methods(SqliteStorage)
