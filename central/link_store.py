"""Node connection state shared by central replicas (issue 10).

Each replica keeps what its own streams see in memory (node_links.NodeLinks). On
PostgreSQL, where several replicas share one database, each replica also writes
the states that changed to `node_links`, batched (at most one transaction per
FLUSH_SECONDS), and the admin service answers `nodes list/show/health`, status
and explain from the merge of its own states and the stored ones. So a node is
shown connected, with its version, last seen and outbox lag, whichever replica
is asked.

Rules of the merge (pure, `merged`):
- a node connected to this replica: this replica's state;
- else the stored row when it is newer than what this replica saw;
- a stored "connected" that nobody refreshed for STALE_MS (its replica was
  killed before it could say the stream ended) counts as disconnected.
A row is only overwritten by the same or a newer connection (connected_since_ms):
the old replica noticing late that a moved node's stream ended does not mark the
node disconnected while another replica serves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .node_links import NodeLinks, NodeLinkState

log = logging.getLogger("edgeward.central.link_store")

FLUSH_SECONDS = 1.0
# A node's messages (heartbeats: 15 s by default) refresh last_seen well within this.
STALE_MS = 60_000

COLUMNS = (
    "node_id, replica, connected, software_version, connected_since_ms, last_seen_ms,"
    " acked_seq, journal_head_seq, applied_revision, users_desired, users_applied, apply_errors"
)
UPSERT_LINK = (
    f"INSERT INTO node_links ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (node_id) DO UPDATE SET replica = excluded.replica,"
    " connected = excluded.connected, software_version = excluded.software_version,"
    " connected_since_ms = excluded.connected_since_ms, last_seen_ms = excluded.last_seen_ms,"
    " acked_seq = excluded.acked_seq, journal_head_seq = excluded.journal_head_seq,"
    " applied_revision = excluded.applied_revision, users_desired = excluded.users_desired,"
    " users_applied = excluded.users_applied, apply_errors = excluded.apply_errors"
    " WHERE excluded.connected_since_ms >= node_links.connected_since_ms"
)
SELECT_LINKS = f"SELECT {COLUMNS} FROM node_links"


class LinkStoreMixin:
    """Mixed into the storages: save_links() and stored_links()."""

    _write: Any
    _read: Any

    async def save_links(self, replica: str, states: Mapping[str, NodeLinkState]) -> None:
        rows = [
            (
                node_id, replica, int(s.connected), s.software_version, s.connected_since_ms,
                s.last_seen_ms, s.acked_seq, s.journal_head_seq, s.applied_revision,
                s.users_desired, s.users_applied, json.dumps(s.apply_errors, sort_keys=True),
            )
            for node_id, s in sorted(states.items())
        ]  # fmt: skip
        if rows:
            async with self._write() as tx:
                await tx.db.executemany(UPSERT_LINK, rows)

    async def stored_links(self) -> dict[str, NodeLinkState]:
        async with self._read() as db:
            rows = await db.execute_fetchall(SELECT_LINKS)
        return {row[0]: _state(row) for row in rows}


def _state(row: Any) -> NodeLinkState:
    return NodeLinkState(
        connected=bool(row[2]),
        software_version=row[3],
        connected_since_ms=row[4],
        last_seen_ms=row[5],
        acked_seq=row[6],
        journal_head_seq=row[7],
        applied_revision=row[8],
        users_desired=row[9],
        users_applied=row[10],
        apply_errors=json.loads(row[11]),
    )


def merged(local: NodeLinkState | None, stored: NodeLinkState | None, now: int) -> NodeLinkState:
    """What to show for one node (see the module docstring)."""
    if local is not None and local.connected:
        return local
    if stored is None:
        return local or NodeLinkState()
    if stored.connected and now - stored.last_seen_ms > STALE_MS:
        stored = replace(stored, connected=False)
    if local is None or stored.last_seen_ms >= local.last_seen_ms:
        return stored
    return local


def merge_all(
    local: Mapping[str, NodeLinkState], stored: Mapping[str, NodeLinkState], now: int
) -> dict[str, NodeLinkState]:
    return {
        node_id: merged(local.get(node_id), stored.get(node_id), now)
        for node_id in sorted(set(local) | set(stored))
    }


async def flush(storage: Any, links: NodeLinks, replica: str) -> None:
    """Write the states changed since the last flush (kept for the next one on failure)."""
    states = links.take_dirty()
    if not states:
        return
    try:
        await storage.save_links(replica, states)
    except Exception:
        log.exception("could not store the state of %d node link(s)", len(states))
        links.dirty.update(states)


async def share_links(
    storage: Any, links: NodeLinks, replica: str, interval: float = FLUSH_SECONDS
) -> None:
    """Flush every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await flush(storage, links, replica)
