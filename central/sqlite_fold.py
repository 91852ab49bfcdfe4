"""SQLite ingest that commits the ledger first and folds it later (the node stream's path).

A batch is committed to the ledger as one unfolded usage_batches row together
with the node's acked_seq (sqlite_ingest.ledger_usage): that commit is what the
Ack covers. Folding it into rollups, totals and lease use, and deciding on the
result (sqlite_ingest.fold_batches), takes every unfolded batch at once: under
load one rollup upsert per user x engine x hour and one totals update per user
cover many batches. A batch is folded:
- in its own transaction, when the caller does not defer, or when a user of the
  batch has a data limit or holds a lease on the node: quota decisions and
  lease grants follow the batch's Ack exactly as when nothing is deferred;
- else within FOLD_DELAY_S, by a task taking every batch committed meanwhile;
- before any lease grant: a grant resets the lease's use, so every batch the
  node has been acked for must already count (nothing is counted twice or lost);
- before any other read or write (admin reads, admin changes such as deleting a
  user or renewing, retention): each sees and acts on every batch acked before
  it, as if that batch had been folded at its ack;
- when the storage opens (batches of a central killed before folding them) and
  when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self

from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, batch_users

from .ingest import Applied, check_batch
from .records import IngestResult, Transaction, now_ms
from .sqlite_core import run_sync
from .sqlite_ingest import fold_batches, ledger_usage, needs_fold_now

log = logging.getLogger("edgeward.central.storage")

# How long a deferred fold waits for more batches (decisions on users without a data
# limit, e.g. expiry, and the usage admin reads lag by this much plus one fold).
FOLD_DELAY_S = 0.05
# Decoded deltas kept for the fold, in batches (beyond: decoded again from the ledger).
KEEP_DECODED = 1000


def _ledger_many(
    conn: Any,
    node_id: str,
    batches: Sequence[tuple[Sequence[UsageDelta], bytes | None]],
    at: int,
    defer: bool,
) -> tuple[list[tuple[int, Sequence[UsageDelta]]], bool]:
    """ledger_usage of each batch in order, and whether they must be folded in their
    transaction (one query for the group's users)."""
    ledgered = [ledger_usage(conn, node_id, deltas, at, payload) for deltas, payload in batches]
    fresh = [rows for _, rows in ledgered if rows]
    if not fresh:
        return ledgered, False
    if not defer:
        return ledgered, True
    return ledgered, needs_fold_now(conn, node_id, set().union(*map(batch_users, fresh)))


class FoldMixin:
    """Mixed into SqliteStorage before IngestMixin (see the module docstring)."""

    _report_usage: Any
    _apply_decisions: Any
    _fold_task: asyncio.Task | None = None
    _fold_wanted = False
    _unfolded = False  # a deferred batch may be unfolded
    _decoded: dict[tuple[str, int], Sequence[UsageDelta]]

    @classmethod
    async def open(cls, path: str | Path, **options: Any) -> Self:
        storage = await super().open(path, **options)  # type: ignore[misc]
        try:
            await storage.fold()  # what a killed central committed but did not fold
        except BaseException:
            await storage.close()
            raise
        return storage

    async def ingest(
        self,
        node_id: str,
        deltas: Sequence[UsageDelta],
        at_ms: int | None = None,
        *,
        defer: bool = False,
        payload: bytes | None = None,
    ) -> IngestResult:
        """Commit a batch exactly once; returns the ack to send.

        `deltas` as decode_usage returns them. The caller sends the Ack (and
        the lease grants) only after this returns. defer=True (the node stream):
        a batch none of whose users has a data limit or a lease on the node is
        folded within FOLD_DELAY_S instead of now (its foreign users are then
        audited by that fold, not returned here). payload: the deltas'
        v1.UsageBatch bytes as received (stored without encoding them again).
        """
        (result,) = await self.ingest_many(node_id, [(deltas, payload)], at_ms, defer=defer)
        return result

    async def ingest_many(
        self,
        node_id: str,
        batches: Sequence[tuple[Sequence[UsageDelta], bytes | None]],
        at_ms: int | None = None,
        *,
        defer: bool = False,
    ) -> list[IngestResult]:
        """ingest() of a node's consecutive batches in one transaction (one commit and
        one sync for batches that arrived together); one result per batch, in order.
        Lease grants, if any, come with the last result (sent after the last Ack:
        a grant must follow the Ack of the usage it is based on)."""
        for deltas, _ in batches:
            check_batch(deltas)
        at = at_ms if at_ms is not None else now_ms()
        keep = self._decoded_batches()
        kept: list[tuple[str, int]] = []
        async with self._write(fold_first=False) as tx:
            ledgered, fold_now = await run_sync(tx.db, _ledger_many, node_id, batches, at, defer)
            for _, fresh in ledgered:
                if fresh and len(keep) < KEEP_DECODED:
                    key = (node_id, fresh[-1][0])
                    keep[key] = fresh  # taken by the fold (dropped if this rolls back)
                    kept.append(key)
            rejected: set[str] = set()
            leases: list[v1.Lease] = []
            try:
                if fold_now:
                    folded = await self._fold_pending(tx, at)
                    mine = folded[node_id]
                    assert mine.agg is not None
                    rejected = mine.agg.rejected_users
                    limited = [
                        user for user, limits in mine.limits.items()
                        if limits.data_limit_bytes is not None
                    ]  # fmt: skip
                    leases = await self._grant_after_fold(tx, node_id, limited, at)
            except BaseException:
                for key in kept:
                    keep.pop(key, None)
                raise
        if any(fresh for _, fresh in ledgered) and not fold_now:
            self._fold_soon()
        results = [
            IngestResult(
                acked, len(fresh), len(deltas) - len(fresh),
                batch_users(fresh) & rejected if rejected else set(), [],
            )
            for (acked, fresh), (deltas, _) in zip(ledgered, batches, strict=True)
        ]  # fmt: skip
        results[-1].leases.extend(leases)
        return results

    def _decoded_batches(self) -> dict[tuple[str, int], Sequence[UsageDelta]]:
        try:
            return self._decoded
        except AttributeError:
            self._decoded = {}
            return self._decoded

    def _fold_soon(self) -> None:
        self._unfolded = True
        self._fold_wanted = True
        if self._fold_task is None or self._fold_task.done():
            self._fold_task = asyncio.get_running_loop().create_task(self._fold_later())

    async def _fold_later(self) -> None:
        # Ends when no batch was deferred while it waited (one fold per FOLD_DELAY_S
        # at most); a failed fold is retried by the next deferred batch or at close.
        while self._fold_wanted:
            self._fold_wanted = False
            await asyncio.sleep(FOLD_DELAY_S)
            try:
                await self.fold()
            except Exception:
                log.exception("folding usage batches failed (retried at the next batch)")
                return

    async def fold(self) -> None:
        """Fold every committed, unfolded usage batch now."""
        async with super()._write() as tx:  # type: ignore[misc]
            await self._fold_pending(tx, now_ms())
        # Committed, and nothing awaited since the lock was let go: a batch deferred
        # later waited for the lock and sets the flag again after its own commit.
        self._unfolded = False

    @contextlib.asynccontextmanager
    async def _write(self, *, fold_first: bool = True) -> AsyncIterator[Transaction]:
        """A write transaction that first folds what was deferred (unless fold_first is
        False: ingest's ledger commit)."""
        async with super()._write() as tx:  # type: ignore[misc]
            folding = fold_first and self._unfolded
            if folding:
                await self._fold_pending(tx, now_ms())
            yield tx
        if folding:
            self._unfolded = False  # as in fold()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Any]:
        """A read that sees every batch acked before it began (folds them first)."""
        if self._unfolded:
            await self.fold()
        async with super()._read() as db:  # type: ignore[misc]
            yield db

    async def _fold_pending(self, tx: Transaction, at: int) -> dict[str, Applied]:
        """Fold in tx, audit foreign users, decide; returns each folded node's Applied.

        Grants no leases: the caller grants for its own node, right after whose
        Ack they are sent; other nodes' users get theirs with their next batch.
        """
        folded = await run_sync(tx.db, fold_batches, self._decoded_batches())
        if not folded:
            return {}
        limits: dict = {}
        quota_used: dict[str, int] = {}
        for node_id, applied in folded.items():
            await self._report_usage(tx, node_id, applied, at)
            limits.update(applied.limits)
            quota_used.update(applied.quota_used)
        # A user on several nodes: quota_used of the node folded last includes the others.
        await self._apply_decisions(tx, at, limits, quota_used)
        return folded

    async def _grant_after_fold(
        self, tx: Transaction, node_id: str, user_ids: list[str], at: int
    ) -> list[v1.Lease]:
        if not user_ids:
            return []
        return await super()._grant_in(tx, node_id, user_ids, at)  # type: ignore[misc]

    async def _grant_in(
        self,
        tx: Transaction,
        node_id: str,
        user_ids: list[str] | None,
        at: int,
        fresh: bool = False,
    ) -> list[v1.Lease]:
        """A lease grant after folding every committed batch (see the module docstring)."""
        await self._fold_pending(tx, at)
        return await super()._grant_in(tx, node_id, user_ids, at, fresh)  # type: ignore[misc]

    async def close(self) -> None:
        """Fold what is left, then close (what a failed fold leaves is folded at the
        next open)."""
        task = self._fold_task
        if task is not None and not task.done():
            self._fold_wanted = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.fold()
        except Exception:
            log.exception("folding usage batches at close failed (done at the next open)")
        await super().close()  # type: ignore[misc]
