"""Plain records the journal takes and returns (see agent/journal.py)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeward.agent.journal_schema import JournalError

StreamKey = tuple[str, str, str]  # (user_id, engine, epoch)


class AckAheadError(JournalError):
    """Central acknowledged a seq this journal never gave out."""


@dataclass(frozen=True, slots=True)
class PendingDelta:
    """One outbox row, as the uplink sends it (edgeward.v1.UsageDelta)."""

    seq: int
    user_id: str
    engine: str
    epoch: str
    uplink: int
    downlink: int
    sampled_at_ms: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    rows: int
    uplink: int
    downlink: int
    high_seq: int  # highest seq ever given out
    acked_seq: int  # highest seq central acknowledged
    handed_out_seq: int  # highest seq pending() returned


@dataclass(frozen=True, slots=True)
class CompactResult:
    rows_before: int
    rows_after: int


@dataclass(frozen=True, slots=True)
class EnforcementState:
    user_id: str
    suspended: bool
    reason: int  # edgeward.v1.Reason
    decided_at_ms: int


@dataclass(frozen=True, slots=True)
class LocalDecision:
    user_id: str
    action: int  # edgeward.v1.Action
    reason: int  # edgeward.v1.Reason
    decided_at_ms: int


@dataclass(frozen=True, slots=True)
class Lease:
    user_id: str
    lease_id: int
    granted: int
    used: int

    @property
    def remaining(self) -> int:
        return max(0, self.granted - self.used)


@dataclass(frozen=True, slots=True)
class StoredDesired:
    """The desired state as the journal holds it: user id -> serialized UserSpec.
    legacy_snapshot: a whole serialized DesiredSnapshot from a journal written
    before per-user rows (empty once the agent re-stored it)."""

    revision: int
    users: dict[str, bytes]
    legacy_snapshot: bytes = b""
