"""Turning a batch of usage deltas into ledger rows and aggregates (pure).

Rows are `edgeward.proto.usage_codec.UsageDelta` tuples, as decode_usage
returns them: (seq, user_id, engine, epoch, uplink, downlink, sampled_at_ms).
The whole batch is summed here first so storage writes one row per user, per
user x engine x hour and per node, whatever the number of deltas.
"""

from __future__ import annotations

import operator
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

from edgeward.proto import v1
from edgeward.proto.usage_codec import InvalidUsageBatch, UsageDelta, batch_seqs, user_rows

from .decide import UserLimits

HOUR_MS = 3_600_000

# A batch breaking the protocol (seq 0, seqs not strictly increasing, bad columns).
InvalidBatch = InvalidUsageBatch


def check_batch(deltas: Sequence[UsageDelta]) -> None:
    """The seq rules storage relies on (decode_usage checks them too, and more)."""
    if not deltas:
        return
    seqs = batch_seqs(deltas)
    if seqs[0] < 1:
        raise InvalidBatch("usage delta seq must be >= 1")
    if not all(map(operator.lt, seqs, islice(seqs, 1, None))):
        at = next(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
        if seqs[at] < 1:
            raise InvalidBatch("usage delta seq must be >= 1")
        raise InvalidBatch(
            f"usage delta seqs must strictly increase in a batch ({seqs[at]} after {seqs[at - 1]})"
        )


@dataclass
class Aggregate:
    ledger: list[tuple] = field(default_factory=list)  # rows for the deltas table
    hourly: dict[tuple[str, int, int], list[int]] = field(default_factory=dict)
    per_user: dict[str, list[int]] = field(default_factory=dict)  # user -> [up, down]
    node_uplink: int = 0
    node_downlink: int = 0
    rejected_users: set[str] = field(default_factory=set)

    def hourly_rows(self, node_id: str) -> list[tuple]:
        """(user, node, engine, hour_ms, up, down) rows of the hourly rollup."""
        return [(u, node_id, e, h, s[0], s[1]) for (u, e, h), s in self.hourly.items()]

    def user_rows(self) -> list[tuple[int, int, int, str]]:
        """(up, down, up + down, user) rows adding to the per-user totals."""
        return [(s[0], s[1], s[0] + s[1], u) for u, s in self.per_user.items()]


def aggregate(
    node_id: str,
    deltas: Sequence[UsageDelta],
    countable_users: Container[str],
    ledger: bool = True,
) -> Aggregate:
    """Ledger rows for every delta; sums for those of users the node may report for.

    ledger=False: no per-delta ledger rows (a backend storing the batch whole).

    A delta of a user never assigned to this node is kept in the ledger with
    counted=0 and adds to nothing: a node cannot charge another node's users.
    """
    result = aggregate_batches([deltas], countable_users)
    if ledger:
        result.ledger = [
            (node_id, seq, user_id, int(engine), epoch, up, down, at,
             int(user_id in countable_users))
            for seq, user_id, engine, epoch, up, down, at in deltas
        ]  # fmt: skip
    return result


def aggregate_batches(
    batches: Iterable[Sequence[UsageDelta]], countable_users: Container[str]
) -> Aggregate:
    """aggregate(ledger=False) of several batches at once (UsageColumns read as columns)."""
    result = Aggregate()
    # Sums per (user, engine, hour) first, one dict lookup per delta; users, the node
    # and foreign users follow from those keys (far fewer than deltas).
    by_hour: dict[tuple[str, int, int], list[int]] = {}
    get = by_hour.get
    for deltas in batches:
        for user_id, engine, up, down, at in user_rows(deltas):
            key = (user_id, engine, at - at % HOUR_MS)
            sums = get(key)
            if sums is None:
                by_hour[key] = [up, down]
            else:
                sums[0] += up
                sums[1] += down
    hourly = result.hourly
    per_user = result.per_user
    node_up = node_down = 0
    for (user_id, engine, hour), (up, down) in by_hour.items():
        if user_id not in countable_users:
            result.rejected_users.add(user_id)
            continue
        hourly[(user_id, int(engine), hour)] = [up, down]
        sums = per_user.get(user_id)
        if sums is None:
            per_user[user_id] = [up, down]
        else:
            sums[0] += up
            sums[1] += down
        node_up += up
        node_down += down
    result.node_uplink = node_up
    result.node_downlink = node_down
    return result


class CountableUser(NamedTuple):
    """A user of the batch ever assigned to the node, as storage reads it before writing."""

    user_id: str
    assigned: bool  # False: removed since (its deltas still count: the traffic happened)
    data_limit_bytes: int | None
    expires_at_ms: int | None
    enforced_reason: int
    quota_used_bytes: int  # before this batch
    leased: bool  # holds a lease on this node


@dataclass(frozen=True)
class Applied:
    """What a backend's apply_usage wrote."""

    acked_seq: int
    fresh: int  # deltas newly in the ledger
    agg: Aggregate | None  # None when nothing was fresh
    unassigned: list[str]  # users once assigned to the node, now removed (counted)
    # Users of the batch decide() can act on, with their quota use after the batch.
    limits: dict[str, UserLimits] = field(default_factory=dict)
    quota_used: dict[str, int] = field(default_factory=dict)


def applied(
    acked_seq: int,
    fresh: int,
    agg: Aggregate,
    countable: list[CountableUser],
    quota_after: dict[str, int] | None = None,
) -> Applied:
    """The Applied of a batch whose writes are done: enforcement inputs after the batch.

    quota_after: quota use as the totals update returned it, where other writers may
    have added to a user since it was read (PostgreSQL replicas); else computed.
    """
    limits, quota_used = {}, {}
    for user in countable:
        if (
            user.data_limit_bytes is not None
            or user.expires_at_ms is not None
            or (user.enforced_reason)
        ):
            user_id = user.user_id
            limits[user_id] = UserLimits(
                user.data_limit_bytes, user.expires_at_ms, v1.Reason(user.enforced_reason)
            )
            if quota_after is not None:
                quota_used[user_id] = quota_after[user_id]
            else:
                quota_used[user_id] = user.quota_used_bytes + sum(agg.per_user[user_id])
    unassigned = sorted(user.user_id for user in countable if not user.assigned)
    return Applied(acked_seq, fresh, agg, unassigned, limits, quota_used)
