"""Plain records central's storage hands out and takes in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiosqlite

from edgeward.proto import v1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class IngestResult:
    acked_seq: int  # every seq <= this is durably committed for the node
    applied: int  # deltas newly applied by this batch
    duplicates: int  # deltas already in the ledger (replays)
    rejected_users: set[str]  # users the node may not report for (ledgered, not counted)
    leases: list[v1.Lease]  # grants to send right after the Ack


@dataclass(frozen=True)
class User:
    user_id: str
    plan_id: str | None
    data_limit_bytes: int | None
    expires_at_ms: int | None
    admin_suspended: bool
    enforced_reason: v1.Reason
    uplink_bytes: int
    downlink_bytes: int
    quota_used_bytes: int
    uuid: str
    password: str
    wg_private_key: str
    wg_public_key: str
    wg_address: str
    node_ids: tuple[str, ...]

    @property
    def suspended(self) -> bool:
        return self.admin_suspended or self.enforced_reason != v1.Reason.UNSPECIFIED


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at_ms: int
    actor: str
    action: str
    subject: str
    reason: str


@dataclass
class Transaction:
    """An open write transaction and the node changes it accumulates."""

    db: aiosqlite.Connection
    touched: dict[str, set[str]] = field(default_factory=dict)  # node -> changed users
    commands: dict[str, list[v1.Command]] = field(default_factory=dict)
    limited: list[str] = field(default_factory=list)  # set by the last enforcement pass

    def touch(self, node_id: str, user_id: str, command: v1.Command | None = None) -> None:
        self.touched.setdefault(node_id, set()).add(user_id)
        if command is not None:
            self.commands.setdefault(node_id, []).append(command)
