"""Turning a batch of usage deltas into ledger rows and aggregates (pure)."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from edgeward.proto import v1

HOUR_MS = 3_600_000


class InvalidBatch(ValueError):
    """A batch breaks the protocol (seq 0, seqs not strictly increasing)."""


def check_batch(deltas: Sequence[v1.UsageDelta]) -> None:
    previous = 0
    for delta in deltas:
        if delta.seq <= previous:
            if delta.seq == 0:
                raise InvalidBatch("usage delta seq must be >= 1")
            raise InvalidBatch(
                f"usage delta seqs must strictly increase in a batch ({delta.seq} after {previous})"
            )
        previous = delta.seq


@dataclass
class Aggregate:
    ledger: list[tuple] = field(default_factory=list)  # rows for the deltas table
    hourly: dict[tuple[str, int, int], list[int]] = field(default_factory=dict)
    per_user: dict[str, list[int]] = field(default_factory=dict)  # user -> [up, down]
    node_uplink: int = 0
    node_downlink: int = 0
    rejected_users: set[str] = field(default_factory=set)


def aggregate(
    node_id: str, deltas: Sequence[v1.UsageDelta], countable_users: Container[str]
) -> Aggregate:
    """Ledger rows for every delta; sums for those of users the node may report for.

    A delta of a user never assigned to this node is kept in the ledger with
    counted=0 and adds to nothing: a node cannot charge another node's users.
    """
    result = Aggregate()
    ledger = result.ledger
    hourly = result.hourly
    per_user = result.per_user
    for delta in deltas:
        user_id = delta.user_id
        up = delta.uplink_bytes
        down = delta.downlink_bytes
        engine = int(delta.engine)
        counted = user_id in countable_users
        ledger.append(
            (node_id, delta.seq, user_id, engine, delta.epoch, up, down, delta.sampled_at_ms,
             int(counted))
        )  # fmt: skip
        if not counted:
            result.rejected_users.add(user_id)
            continue
        key = (user_id, engine, delta.sampled_at_ms - delta.sampled_at_ms % HOUR_MS)
        sums = hourly.get(key)
        if sums is None:
            hourly[key] = [up, down]
        else:
            sums[0] += up
            sums[1] += down
        sums = per_user.get(user_id)
        if sums is None:
            per_user[user_id] = [up, down]
        else:
            sums[0] += up
            sums[1] += down
        result.node_uplink += up
        result.node_downlink += down
    return result
