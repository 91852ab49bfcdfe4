"""The agent's journal: one SQLite file, one writer.

Holds what the agent must not forget across a crash or a long outage of
central: the desired state and its revision, what each engine has applied,
the current counter epoch and counter baselines per engine, the outbox of
usage deltas with their never-reused seqs, the highest seq central
acknowledged, local enforcement (suspensions, quota leases) and local
decisions central has not heard of yet.

``Journal`` is the trio face of ``JournalStore``: every call, read or write,
takes one trio lock and runs on a worker thread through
``trio.to_thread.run_sync`` with the one sqlite3 connection (counter_state,
which reads only the store's memory, runs in place under the lock) (DESIGN.md
section 3: plain sqlite3 there is 2-3x faster than aiosqlite under the
asyncio bridge). A cancelled caller waits for its SQL to finish, so a
transaction is always either committed or rolled back, never abandoned.

Schema, migrations and safe opening: agent/journal_schema.py. SQL and
durability choices: agent/journal_store.py (enforcement and leases:
agent/journal_enforcement.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, TypeVar

import trio

from edgeward.agent.deltas import Sample
from edgeward.agent.journal_records import (
    AckAheadError,
    CompactResult,
    EnforcementState,
    Lease,
    LocalDecision,
    OutboxStats,
    PendingDelta,
    StoredDesired,
    StreamKey,
)
from edgeward.agent.journal_schema import SCHEMA_VERSION, JournalError, JournalFullError
from edgeward.agent.journal_store import JournalStore

__all__ = [
    "SCHEMA_VERSION",
    "AckAheadError",
    "CompactResult",
    "EnforcementState",
    "Journal",
    "JournalError",
    "JournalFullError",
    "Lease",
    "LocalDecision",
    "OutboxStats",
    "PendingDelta",
    "StoredDesired",
    "open_journal",
]

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_journal(path: os.PathLike[str] | str) -> AsyncIterator[Journal]:
    """``async with open_journal(path) as journal:`` -- open, use, close."""
    journal = await Journal.open(path)
    async with journal:
        yield journal


class Journal:
    """Use through ``open_journal(path)``, or ``Journal.open`` + ``aclose``."""

    def __init__(self, store: JournalStore) -> None:
        self._store = store
        self._lock = trio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: os.PathLike[str] | str) -> Journal:
        """Open or create the journal; raises JournalError (path and reason)
        when the file is not a usable journal, leaving it untouched."""
        store = await trio.to_thread.run_sync(JournalStore.open, Path(path))
        return cls(store)

    @property
    def path(self) -> Path:
        return self._store.path

    async def aclose(self) -> None:
        async with self._lock:
            if not self._closed:
                self._closed = True
                await trio.to_thread.run_sync(self._store.close)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            if self._closed:
                raise JournalError(self.path, "is closed")
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # counters
    async def current_epoch(self, engine: str) -> str | None:
        return await self._run(self._store.current_epoch, engine)

    async def baselines(self, engine: str, epoch: str) -> dict[str, int]:
        return await self._run(self._store.baselines, engine, epoch)

    async def epoch_marker(self, engine: str) -> str | None:
        return await self._run(self._store.epoch_marker, engine)

    async def counter_state(self, engine: str) -> tuple[str | None, str | None, dict[str, int]]:
        """(current epoch, its marker, its baselines), read from the store's memory
        mirror under the lock, without a thread crossing (no SQL runs): every
        sampling round asks, and the crossing cost more than the read."""
        async with self._lock:
            if self._closed:
                raise JournalError(self.path, "is closed")
            return self._store.counter_state(engine)

    async def commit_sample(
        self, sample: Sample, *, sampled_at_ms: int, epoch_marker: str | None = None
    ) -> tuple[int, int]:
        return await self._run(self._store.commit_sample, sample, sampled_at_ms, epoch_marker)

    async def checkpoint(self) -> int:
        return await self._run(self._store.checkpoint)

    # outbox
    async def pending(self, after_seq: int, limit: int) -> list[PendingDelta]:
        return await self._run(self._store.pending, after_seq, limit)

    async def ack(self, seq: int) -> int:
        return await self._run(self._store.ack, seq)

    async def skip_seqs_to(self, seq: int) -> None:
        await self._run(self._store.skip_seqs_to, seq)

    async def compact(self) -> CompactResult:
        return await self._run(self._store.compact)

    async def outbox_stats(self) -> OutboxStats:
        return await self._run(self._store.outbox_stats)

    async def outbox_totals(self) -> dict[StreamKey, tuple[int, int]]:
        return await self._run(self._store.outbox_totals)

    # desired / applied
    async def set_desired(self, revision: int, users: Mapping[str, bytes]) -> None:
        await self._run(self._store.set_desired, revision, dict(users))

    async def change_desired(
        self, revision: int, upserts: Mapping[str, bytes], removed: Iterable[str]
    ) -> None:
        await self._run(self._store.change_desired, revision, dict(upserts), list(removed))

    async def desired(self) -> StoredDesired | None:
        return await self._run(self._store.desired)

    async def set_applied(self, engine: str, changes: Mapping[str, object | None]) -> None:
        await self._run(self._store.set_applied, engine, dict(changes))

    async def applied(self, engine: str) -> dict[str, object]:
        return await self._run(self._store.applied, engine)

    # enforcement
    async def set_enforcement(
        self, states: Iterable[EnforcementState], decisions: Iterable[LocalDecision] = ()
    ) -> None:
        await self._run(self._store.set_enforcement, list(states), list(decisions))

    async def enforcement(self) -> dict[str, EnforcementState]:
        return await self._run(self._store.enforcement)

    async def unreported_decisions(self, limit: int = 1000) -> list[tuple[int, LocalDecision]]:
        return await self._run(self._store.unreported_decisions, limit)

    async def mark_decisions_reported(self, up_to_id: int) -> None:
        await self._run(self._store.mark_decisions_reported, up_to_id)

    async def grant_leases(self, grants: Iterable[tuple[str, int, int]]) -> int:
        return await self._run(self._store.grant_leases, list(grants))

    async def leases(self) -> dict[str, Lease]:
        return await self._run(self._store.leases)

    async def drop_leases(self, user_ids: Iterable[str]) -> None:
        await self._run(self._store.drop_leases, list(user_ids))
