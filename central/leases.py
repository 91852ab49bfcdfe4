"""Quota leases: how much of a user's remaining bytes each node may spend on its own.

A lease lets a node keep enforcing a user's quota while it cannot reach
central. Invariant: the outstanding leases of a user (granted minus the usage
reported against them) never sum to more than the user's remaining bytes, so
nodes spending their whole leases offline still cannot exceed the quota.

Central cannot know when a node has received a grant, so a lease is never
shrunk: a refresh only tops a node's lease up towards its fair share, out of
the bytes no node holds yet. A node holding more than its fair share keeps it
and spends down to it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def remaining_bytes(data_limit_bytes: int, used_bytes: int) -> int:
    return max(0, data_limit_bytes - used_bytes)


def split_leases(
    remaining: int, outstanding: Mapping[str, int], refresh: Collection[str]
) -> dict[str, int]:
    """New lease sizes for nodes in `refresh` whose lease grows.

    remaining: the user's remaining quota bytes.
    outstanding: bytes each serving node still holds (0 without a lease); every
      node serving the user is a key, including those being refreshed.
    refresh: nodes that may get a new grant now (sorted order decides who is
      served first when the unleased bytes run short).

    The fair share is remaining // number of serving nodes. A refreshed node
    below it is topped up from the unleased bytes (remaining minus everything
    held). Nodes whose lease would not grow are left out: they keep theirs.
    """
    unknown = set(refresh) - set(outstanding)
    if unknown:
        raise ValueError(f"refresh names nodes that do not serve the user: {sorted(unknown)}")
    if not outstanding:
        return {}
    fair_share = remaining // len(outstanding)
    unleased = remaining - sum(outstanding.values())
    grants: dict[str, int] = {}
    for node in sorted(refresh):
        top_up = min(fair_share - outstanding[node], unleased)
        if top_up > 0:
            grants[node] = outstanding[node] + top_up
            unleased -= top_up
    return grants
