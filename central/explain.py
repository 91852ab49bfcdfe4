"""Why a user is or is not served (pure): `edgeward explain USER`.

Inputs are what central knows: the user's limits and enforcement state, and per
assigned node the revision of the user's latest change, the node's last applied
revision and apply errors (from its stream), its lease and traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from edgeward.proto import v1

from .admin_records import UserNodeFacts
from .node_links import NodeLinkState
from .records import User, now_ms

__all__ = ["Report", "explain", "iso", "now_ms"]

SOON_MS = 3 * 86_400_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class Report:
    served: bool
    reasons: list[str]
    nodes: list[v1.ExplainNode]
    summary: str


def user_reasons(user: User, now: int) -> tuple[list[str], list[str]]:
    """(why not served, caveats) from the user's own state."""
    blocking, caveats = [], []
    if user.admin_suspended:
        blocking.append("suspended by an admin (see recent actions for who and why)")
    reason = user.enforced_reason
    limit, used = user.data_limit_bytes, user.quota_used_bytes
    if reason == v1.Reason.QUOTA:
        blocking.append(
            f"data limit reached: used {human_bytes(used)} of {human_bytes(limit or 0)}"
            " (top up or renew with --reset-usage)"
        )
    elif reason == v1.Reason.EXPIRED:
        blocking.append(f"expired at {iso(user.expires_at_ms or 0)} (renew to extend)")
    elif reason != v1.Reason.UNSPECIFIED:
        blocking.append(f"suspended by enforcement: {v1.Reason(reason).name.lower()}")
    if not user.node_ids:
        blocking.append("not assigned to any node (nodes assign USER NODE)")
    if not blocking:
        if user.expires_at_ms is not None and user.expires_at_ms - now < SOON_MS:
            caveats.append(f"expires soon: {iso(user.expires_at_ms)}")
        if limit is not None and used * 10 >= limit * 9:
            caveats.append(f"data limit nearly used: {human_bytes(used)} of {human_bytes(limit)}")
    return blocking, caveats


def node_verdict(
    user: User, facts: UserNodeFacts, state: NodeLinkState, revoked: bool
) -> tuple[str, str]:
    if revoked:
        return "revoked", "the node's certificates are revoked: it cannot connect"
    if state.apply_errors.get(user.user_id):
        return "failed", f"the node could not apply the user: {state.apply_errors[user.user_id]}"
    applied = state.applied_revision
    if not state.connected:
        seen = f"last seen {iso(state.last_seen_ms)}" if state.last_seen_ms else "never connected"
        if applied >= facts.user_revision and applied:
            return "node-offline", f"node offline ({seen}); it holds the user's latest state"
        return "node-offline", f"node offline ({seen}); the user's latest change waits for it"
    if applied < facts.user_revision:
        return (
            "pending",
            f"node holds revision {applied}; the user's latest change is revision"
            f" {facts.user_revision} (sent, not yet reported applied)",
        )
    if user.suspended:
        return "suspended", "the node holds the user suspended"
    return "served", f"applied at revision {applied}"


def explain(
    user: User,
    facts: Sequence[UserNodeFacts],
    states: Mapping[str, NodeLinkState],
    revoked: Mapping[str, bool],
    now: int,
) -> Report:
    blocking, caveats = user_reasons(user, now)
    nodes = []
    for f in facts:
        state = states.get(f.node_id) or NodeLinkState()
        verdict, detail = node_verdict(user, f, state, revoked.get(f.node_id, False))
        nodes.append(
            v1.ExplainNode(
                node_id=f.node_id,
                connected=state.connected,
                last_seen_ms=state.last_seen_ms,
                user_revision=f.user_revision,
                applied_revision=state.applied_revision,
                apply_error=state.apply_errors.get(user.user_id, ""),
                lease_bytes=f.lease_bytes,
                uplink_bytes=f.uplink_bytes,
                downlink_bytes=f.downlink_bytes,
                state=verdict,
                detail=detail,
            )
        )
    serving = [n.node_id for n in nodes if n.state == "served"]
    if not blocking and nodes and not serving:
        blocking.append(
            "no node serves the user right now: "
            + "; ".join(f"{n.node_id}: {n.state}" for n in nodes)
        )
    served = not blocking
    if served:
        summary = f"{user.user_id} is served on {len(serving)} of {len(nodes)} node(s)"
        others = [n for n in nodes if n.state != "served"]
        caveats += [f"{n.node_id}: {n.detail}" for n in others]
    else:
        summary = f"{user.user_id} is NOT served: {blocking[0]}"
    return Report(served, blocking + caveats, nodes, summary)
