"""Quota and expiry decisions: a pure function of usage, limits and time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeward.proto import v1


@dataclass(frozen=True)
class UserLimits:
    data_limit_bytes: int | None  # None: unlimited
    expires_at_ms: int | None  # None: never
    enforced_reason: v1.Reason  # UNSPECIFIED: not suspended by enforcement now


@dataclass(frozen=True)
class Decision:
    user_id: str
    action: v1.Action
    reason: v1.Reason  # why suspended, or (for RESUME) which suspension is lifted


def suspension_reason(used_bytes: int, limits: UserLimits, now_ms: int) -> v1.Reason:
    """Why the user must be suspended now, or UNSPECIFIED. Expiry wins over quota."""
    if limits.expires_at_ms is not None and now_ms >= limits.expires_at_ms:
        return v1.Reason.EXPIRED
    if limits.data_limit_bytes is not None and used_bytes >= limits.data_limit_bytes:
        return v1.Reason.QUOTA
    return v1.Reason.UNSPECIFIED


def decide(
    usage: Mapping[str, int], limits: Mapping[str, UserLimits], now_ms: int
) -> list[Decision]:
    """Enforcement changes for the users in `limits` (usage: quota bytes used, 0 if absent).

    Suspends a user whose quota is exhausted or whose expiry passed, resumes one
    whose suspension no longer holds (renewal, top-up), and re-suspends with the
    new reason when it changed (quota -> expired). Users already in the right
    state produce nothing, so running it twice changes nothing. Admin
    suspensions are not enforcement and are not touched here.
    """
    decisions = []
    for user_id in sorted(limits):
        user = limits[user_id]
        wanted = suspension_reason(usage.get(user_id, 0), user, now_ms)
        current = user.enforced_reason
        if wanted == current:
            continue
        if wanted == v1.Reason.UNSPECIFIED:
            decisions.append(Decision(user_id, v1.Action.RESUME, current))
        else:
            decisions.append(Decision(user_id, v1.Action.SUSPEND, wanted))
    return decisions
