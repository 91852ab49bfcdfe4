"""What central knows about each node's stream, for `nodes list/show/health` and explain.

The stream handler (central/stream.py) reports events here; the admin service
reads. Kept in memory: a restarted central knows a node again from its next
Hello (last_seen_ms is also stored with the node's usage). With several central
replicas each one also writes the states that changed (`dirty`) to the shared
database, so any replica can answer for a node connected to another
(link_store.py).

Outbox lag = the node's journal head seq - the seq central acknowledged. The
head comes from Hello (journal_head_seq) and only grows with later acks, so
between a Hello and the next reconnect the lag shown is what was outstanding
at the Hello minus what has been acknowledged since.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgeward.proto import v1

from .records import now_ms


@dataclass
class NodeLinkState:
    connected: bool = False
    software_version: str = ""
    connected_since_ms: int = 0
    last_seen_ms: int = 0
    acked_seq: int = 0
    journal_head_seq: int = 0
    applied_revision: int = 0
    users_desired: int = 0
    users_applied: int = 0
    # user -> the node's last apply error for that user (from AppliedReport)
    apply_errors: dict[str, str] = field(default_factory=dict)

    @property
    def outbox_lag(self) -> int:
        return max(0, self.journal_head_seq - self.acked_seq)


class NodeLinks:
    def __init__(self) -> None:
        self.states: dict[str, NodeLinkState] = {}
        self.dirty: set[str] = set()  # changed since take_dirty()

    def get(self, node_id: str) -> NodeLinkState:
        return self.states.get(node_id) or NodeLinkState()

    def _state(self, node_id: str) -> NodeLinkState:
        self.dirty.add(node_id)
        return self.states.setdefault(node_id, NodeLinkState())

    def take_dirty(self) -> dict[str, NodeLinkState]:
        """Copies of the states changed since the last call."""
        taken = {
            node_id: replace(self.states[node_id], apply_errors=dict(state.apply_errors))
            for node_id in self.dirty
            if (state := self.states.get(node_id)) is not None
        }
        self.dirty.clear()
        return taken

    def connected(self, node_id: str, hello: v1.Hello, acked_seq: int) -> None:
        at = now_ms()
        state = self._state(node_id)
        state.connected = True
        state.software_version = hello.software_version
        state.connected_since_ms = at
        state.last_seen_ms = at
        state.acked_seq = acked_seq
        state.journal_head_seq = max(hello.journal_head_seq, acked_seq)
        state.applied_revision = hello.desired_revision

    def seen(self, node_id: str) -> None:
        self._state(node_id).last_seen_ms = now_ms()

    def acked(self, node_id: str, acked_seq: int) -> None:
        state = self._state(node_id)
        state.acked_seq = acked_seq
        state.journal_head_seq = max(state.journal_head_seq, acked_seq)

    def journal_head(self, node_id: str, head_seq: int) -> None:
        """From a heartbeat: the outbox lag grows between acks too (0: an older node)."""
        state = self._state(node_id)
        state.journal_head_seq = max(state.journal_head_seq, head_seq, state.acked_seq)

    def applied(self, node_id: str, report: v1.AppliedReport) -> None:
        state = self._state(node_id)
        state.applied_revision = report.revision
        state.users_desired = report.users_desired
        state.users_applied = report.users_applied
        state.apply_errors = {e.user_id: e.message for e in report.errors}

    def disconnected(self, node_id: str) -> None:
        state = self._state(node_id)
        state.connected = False
