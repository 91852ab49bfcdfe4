"""Local enforcement: the node suspends and resumes users on its own.

While central is unreachable the node still stops serving a user whose expiry
passed or whose quota lease is spent, and serves them again when a renewed
expiry or a new lease grant arrives. Decisions are journalled (state +
LocalDecision records, reported to central on reconnect).

Pure heart:
- `decide(desired, leases, current, now_ms)`: which users change state, with
  the LocalDecision for each change.
- `effective_desired(desired, enforcement)`: the desired state the engines
  should serve (locally suspended users marked suspended).

Rules: a user is locally suspended when it is expired (reason EXPIRED, which
wins) or holds a lease from central whose used bytes reached the granted ones
(LEASE_SPENT). A user without a lease has no quota from central and is not
limited by leases. Users central itself suspended (in the desired state, or
by a command stored in the enforcement table) get no local decisions.

`LocalEnforcer` is the thin runner: after each sample and on a timer it reads
leases and enforcement from the journal, decides, persists, and hands the
node the new effective desired state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from edgeward.proto import v1

from .journal import EnforcementState, Journal, Lease, LocalDecision
from .model import DesiredState, DesiredUser

log = logging.getLogger(__name__)

SUSPEND = int(v1.Action.SUSPEND)
RESUME = int(v1.Action.RESUME)
EXPIRED = int(v1.Reason.EXPIRED)
LEASE_SPENT = int(v1.Reason.LEASE_SPENT)
NO_REASON = int(v1.Reason.UNSPECIFIED)
# Reasons the node decides on its own; other suspensions in the enforcement
# table come from central's commands and are never lifted locally.
LOCAL_REASONS = frozenset({EXPIRED, LEASE_SPENT})


@dataclass(frozen=True, slots=True)
class EnforcementPlan:
    """Changed users' new states and the decisions that explain them."""

    states: tuple[EnforcementState, ...] = ()
    decisions: tuple[LocalDecision, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.states


def local_reason(user: DesiredUser, lease: Lease | None, now_ms: int) -> int | None:
    """Why the node must not serve `user` now (a Reason), or None."""
    if user.expires_at_ms and now_ms >= user.expires_at_ms:
        return EXPIRED
    if lease is not None and lease.used >= lease.granted:
        return LEASE_SPENT
    return None


def decide(
    desired: DesiredState,
    leases: Mapping[str, Lease],
    current: Mapping[str, EnforcementState],
    now_ms: int,
) -> EnforcementPlan:
    """The state changes local rules call for (pure, nothing mutated)."""
    states: list[EnforcementState] = []
    decisions: list[LocalDecision] = []
    for user in desired.users:
        if user.suspended:
            continue  # central's own decision; nothing for the node to add
        reason = local_reason(user, leases.get(user.user_id), now_ms)
        state = current.get(user.user_id)
        suspended = state is not None and state.suspended
        if suspended and state is not None and state.reason not in LOCAL_REASONS:
            continue  # suspended by a central command: only central lifts it
        if reason is not None and (not suspended or state is None or state.reason != reason):
            states.append(EnforcementState(user.user_id, True, reason, now_ms))
            decisions.append(LocalDecision(user.user_id, SUSPEND, reason, now_ms))
        elif reason is None and suspended:
            assert state is not None
            # The reason that no longer holds: a new grant or a renewed expiry.
            states.append(EnforcementState(user.user_id, False, state.reason, now_ms))
            decisions.append(LocalDecision(user.user_id, RESUME, state.reason, now_ms))
    return EnforcementPlan(tuple(states), tuple(decisions))


def effective_desired(
    desired: DesiredState, enforcement: Mapping[str, EnforcementState]
) -> DesiredState:
    """What the engines should serve: `desired` with locally suspended users
    marked suspended (with the local reason). Unchanged users are the same
    objects; with nothing suspended locally, `desired` itself comes back."""
    changed = False
    users = []
    for user in desired.users:
        state = enforcement.get(user.user_id)
        if state is not None and state.suspended and not user.suspended:
            user = dataclasses.replace(user, suspended=True, suspended_reason=state.reason)
            changed = True
        users.append(user)
    return DesiredState(desired.revision, tuple(users)) if changed else desired


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class LocalEnforcer:
    """Runs `decide` against the journal; tells the node when serving changes.

    `desired` returns central's desired state as the node holds it;
    `on_change(effective)` is awaited after a change was persisted (the node
    pushes it to CoreSync/WgSync). Use `after_sample` as the Sampler's hook,
    and `nursery.start(enforcer.run)` for the timer (expiries between samples).
    """

    journal: Journal
    desired: Callable[[], DesiredState]
    on_change: Callable[[DesiredState], Awaitable[None]] | None = None
    interval: float = 1.0
    wall_ms: Callable[[], int] = _wall_ms
    enforcement: dict[str, EnforcementState] = field(default_factory=dict)
    checks: int = 0
    _loaded: bool = False
    _lock: trio.Lock = field(default_factory=trio.Lock)

    def effective(self, desired: DesiredState | None = None) -> DesiredState:
        """The effective form of `desired` (default: the current one) under the
        enforcement state last read or written."""
        return effective_desired(desired or self.desired(), self.enforcement)

    async def check(self) -> EnforcementPlan:
        """Decide now; persist and announce any change. Returns the plan."""
        async with self._lock:  # the sampler hook and the timer never interleave
            if not self._loaded:
                self.enforcement = await self.journal.enforcement()
                self._loaded = True
            desired = self.desired()
            leases = await self.journal.leases()
            plan = decide(desired, leases, self.enforcement, self.wall_ms())
            self.checks += 1
            if plan.empty:
                return plan
            await self.journal.set_enforcement(plan.states, plan.decisions)
            for state in plan.states:
                self.enforcement[state.user_id] = state
            for d in plan.decisions:
                log.info(
                    "user %s %s locally (%s)",
                    d.user_id,
                    "suspended" if d.action == SUSPEND else "resumed",
                    v1.Reason(d.reason).name,
                )
            if self.on_change is not None:
                await self.on_change(effective_desired(desired, self.enforcement))
            return plan

    async def after_sample(self, _report: object) -> None:
        await self.check()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.check()
            await trio.sleep(self.interval)
