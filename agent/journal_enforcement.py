"""The journal's local-enforcement tables: users' suspension states, the
decisions taken while central was away, and quota leases.

Mixed into JournalStore (agent/journal_store.py), whose transaction helper and
connection it uses; split out only to keep that file a readable size.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable

from edgeward.agent.journal_records import EnforcementState, Lease, LocalDecision


class EnforcementTables:
    _conn: sqlite3.Connection
    _lease_users: set[str]  # users holding a lease: a sample charges only them

    def _tx(self, *, durable: bool) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # JournalStore's

    def _outbox_bytes(self, users: Iterable[str]) -> dict[str, int]:
        raise NotImplementedError  # OutboxTables'

    def set_enforcement(
        self, states: Iterable[EnforcementState], decisions: Iterable[LocalDecision] = ()
    ) -> None:
        """Store users' enforcement states and append the local decisions that
        led to them, in one transaction."""
        states, decisions = list(states), list(decisions)
        with self._tx(durable=True) as conn:
            conn.executemany(
                "INSERT INTO enforcement (user_id, suspended, reason, decided_at_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET suspended = excluded.suspended, "
                "reason = excluded.reason, decided_at_ms = excluded.decided_at_ms",
                [(s.user_id, int(s.suspended), int(s.reason), s.decided_at_ms) for s in states],
            )
            conn.executemany(
                "INSERT INTO local_decisions (user_id, action, reason, decided_at_ms) "
                "VALUES (?, ?, ?, ?)",
                [(d.user_id, int(d.action), int(d.reason), d.decided_at_ms) for d in decisions],
            )

    def enforcement(self) -> dict[str, EnforcementState]:
        return {
            u: EnforcementState(u, bool(s), r, at)
            for u, s, r, at in self._conn.execute(
                "SELECT user_id, suspended, reason, decided_at_ms FROM enforcement"
            )
        }

    def unreported_decisions(self, limit: int = 1000) -> list[tuple[int, LocalDecision]]:
        """Local decisions central has not confirmed, oldest first, with ids."""
        return [
            (i, LocalDecision(u, a, r, at))
            for i, u, a, r, at in self._conn.execute(
                "SELECT id, user_id, action, reason, decided_at_ms FROM local_decisions "
                "ORDER BY id LIMIT ?",
                (limit,),
            )
        ]

    def mark_decisions_reported(self, up_to_id: int) -> None:
        with self._tx(durable=False) as conn:
            conn.execute("DELETE FROM local_decisions WHERE id <= ?", (up_to_id,))

    def grant_leases(self, grants: Iterable[tuple[str, int, int]]) -> int:
        """(user_id, lease_id, bytes): a grant with a higher lease_id than the
        stored one replaces it; others are stale repeats and ignored. Returns
        how many grants were taken.

        Central grants ``bytes`` beyond the usage it has acknowledged, so the
        new lease starts out charged with the user's bytes still in the outbox
        (journalled, not yet acknowledged): a node reconnecting with an unsent
        backlog does not get its spent lease back."""
        grants = list(grants)
        for user_id, lease_id, amount in grants:
            if amount < 0 or lease_id < 0:
                raise ValueError(f"lease for {user_id!r}: negative bytes or lease_id")
        unsent = self._outbox_bytes(user_id for user_id, _, _ in grants)
        with self._tx(durable=True) as conn:
            taken = 0
            for user_id, lease_id, amount in grants:
                taken += conn.execute(
                    "INSERT INTO leases (user_id, lease_id, granted, used) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET lease_id = excluded.lease_id, "
                    "granted = excluded.granted, used = excluded.used "
                    "WHERE excluded.lease_id > lease_id",
                    (user_id, lease_id, amount, unsent.get(user_id, 0)),
                ).rowcount
        self._lease_users.update(user_id for user_id, _, _ in grants)
        return taken

    def leases(self) -> dict[str, Lease]:
        return {
            u: Lease(u, i, g, used)
            for u, i, g, used in self._conn.execute(
                "SELECT user_id, lease_id, granted, used FROM leases"
            )
        }

    def drop_leases(self, user_ids: Iterable[str]) -> None:
        user_ids = list(user_ids)
        with self._tx(durable=True) as conn:
            conn.executemany("DELETE FROM leases WHERE user_id = ?", [(u,) for u in user_ids])
        self._lease_users.difference_update(user_ids)
