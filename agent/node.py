"""The node: the one object that owns every write of the agent's state.

Like headscale's single State, every change to what this node serves goes
through here, in one place, under one lock: desired state from central
(snapshots, changes), central's enforcement commands, quota leases, sampled
usage, and local decisions (expiry, spent lease) taken while central may be
away. Each change is committed to the journal first; only then does memory
follow and the *effective* state (desired users with every suspension folded
in) go to the engines' sync tasks (CoreSync, WgSync) through `subscribe`.

The rules are pure functions: local decisions and the effective state come
from agent/local_enforcement.py (`decide`, `effective_desired`); `verdict`
here says why a user is or is not served (for `explain`). `Node` is the thin
driver around them and the journal.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import trio

from edgeward.proto import v1

from .deltas import ENGINES, Sample, delta_columns
from .journal import EnforcementState, Journal, Lease, LocalDecision, StoredDesired
from .local_enforcement import LOCAL_REASONS, decide, effective_desired
from .model import (
    DesiredState,
    DesiredUser,
    SpecError,
    desired_from_wire,
    encode_users,
    user_from_wire,
)

log = logging.getLogger("edgeward.agent.node")

_ACTIONS = {int(v1.Action.SUSPEND), int(v1.Action.RESUME)}
_REASONS = {int(r) for r in v1.Reason}


CRASH_ENV = "EDGEWARD_AGENT_CRASH"
_crash_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Test hook: EDGEWARD_AGENT_CRASH=NAME:N kills this process (SIGKILL) the Nth
    time it passes point NAME. Unset (always, in production): does nothing."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def wall_ms() -> int:
    return int(time.time() * 1000)


def reason_name(reason: int) -> str:
    try:
        return v1.Reason(reason).name.lower()
    except ValueError:
        return f"reason {reason}"


class RefusedInput(ValueError):
    """Something central sent is malformed; nothing of it was taken."""


# ---------------------------------------------------------------- pure rules


@dataclass(frozen=True, slots=True)
class Verdict:
    served: bool
    reason: str  # why (not) served, for people
    code: int = 0  # the edgeward.v1.Reason when not served


def verdict(
    user: DesiredUser | None,
    state: EnforcementState | None,
    lease: Lease | None,
    now_ms: int,
) -> Verdict:
    """Whether a user is served at now_ms, and why (first reason wins)."""
    if user is None:
        return Verdict(False, "not in this node's desired state")
    if user.suspended:
        why = reason_name(user.suspended_reason)
        return Verdict(False, f"suspended by central ({why})", user.suspended_reason or 3)
    if user.expires_at_ms and now_ms >= user.expires_at_ms:
        return Verdict(False, f"expired at {user.expires_at_ms} ms", int(v1.Reason.EXPIRED))
    if lease is not None and lease.remaining <= 0:
        return Verdict(
            False,
            f"quota lease {lease.lease_id} spent ({lease.used} of {lease.granted} bytes)",
            int(v1.Reason.LEASE_SPENT),
        )
    if state is not None and state.suspended and state.reason not in LOCAL_REASONS:
        return Verdict(
            False, f"suspended by central command ({reason_name(state.reason)})", state.reason
        )
    if lease is not None:
        return Verdict(True, f"active; lease {lease.lease_id}: {lease.remaining} bytes left")
    return Verdict(True, "active")


def check_commands(commands: Iterable[v1.Command]) -> list[v1.Command]:
    """Enforcement commands, validated; RefusedInput names the first bad one."""
    out = []
    for i, command in enumerate(commands):
        if not command.user_id:
            raise RefusedInput(f"enforcement command {i} has an empty user id")
        if int(command.action) not in _ACTIONS:
            raise RefusedInput(
                f"enforcement command for {command.user_id!r}: unknown action {int(command.action)}"
            )
        if int(command.reason) not in _REASONS:
            raise RefusedInput(
                f"enforcement command for {command.user_id!r}: unknown reason {int(command.reason)}"
            )
        out.append(command)
    return out


def check_leases(leases: Iterable[v1.Lease]) -> list[tuple[str, int, int]]:
    out = []
    for lease in leases:
        if not lease.user_id:
            raise RefusedInput("lease grant with an empty user id")
        out.append((lease.user_id, int(lease.lease_id), int(lease.bytes)))
    return out


# ---------------------------------------------------------------- the state object


Subscriber = Callable[[DesiredState], None]


def desired_from_journal(stored: StoredDesired) -> DesiredState:
    """The desired state the journal holds (per-user rows, or a legacy snapshot)."""
    if stored.legacy_snapshot and not stored.users:
        state = desired_from_wire(v1.DesiredSnapshot.parse(stored.legacy_snapshot))
        return DesiredState(stored.revision, state.users)
    return desired_from_wire(
        v1.DesiredSnapshot(
            revision=stored.revision,
            users=[v1.UserSpec.parse(spec) for spec in stored.users.values()],
        )
    )


class Node:
    """See the module docstring. Build with `await Node.load(journal)`."""

    def __init__(self, journal: Journal, *, clock: Callable[[], int] = wall_ms) -> None:
        self.journal = journal
        self.clock = clock
        self.desired = DesiredState(revision=0)
        self.enforcement: dict[str, EnforcementState] = {}
        self.leases: dict[str, Lease] = {}
        self.applied: dict[str, dict[str, object]] = {}  # engine -> user -> state
        self.last_usage: dict[str, int] = {}  # user -> sampled_at_ms of last delta
        self._effective: DesiredState = self.desired
        self._subscribers: list[Subscriber] = []
        self._lock = trio.Lock()
        self._outbox_changed = trio.Event()

    @classmethod
    async def load(cls, journal: Journal, *, clock: Callable[[], int] = wall_ms) -> Node:
        """The node as the journal remembers it (nothing from central needed)."""
        node = cls(journal, clock=clock)
        stored = await journal.desired()
        if stored is not None:
            node.desired = desired_from_journal(stored)
            if stored.legacy_snapshot:  # a journal from before per-user rows
                await journal.set_desired(node.desired.revision, encode_users(node.desired.users))
        node.enforcement = await journal.enforcement()
        node.leases = await journal.leases()
        node.applied = {engine: await journal.applied(engine) for engine in ENGINES}
        await node._check_local_locked()  # expiries that passed while the agent was down
        node._effective = node._compute_effective()
        return node

    # ------------------------------------------------------------ reading

    @property
    def revision(self) -> int:
        return self.desired.revision

    def effective(self) -> DesiredState:
        return self._effective

    def subscribe(self, subscriber: Subscriber) -> None:
        """subscriber(effective_state) now and after every change."""
        self._subscribers.append(subscriber)
        subscriber(self._effective)

    def explain(self, user_id: str) -> dict[str, Any]:
        user = self.desired.user(user_id)
        state = self.enforcement.get(user_id)
        lease = self.leases.get(user_id)
        v = verdict(user, state, lease, self.clock())
        desired: dict[str, Any] = {}
        if user is not None:
            desired = {
                "proxy": sorted(f"{p.inbound_tag}/{p.email}" for p in user.proxies),
                "wireguard": sorted(f"{w.interface}/{w.public_key}" for w in user.wireguard),
                "expires_at_ms": user.expires_at_ms,
                "suspended": user.suspended,
            }
        return {
            "user_id": user_id,
            "served": v.served,
            "reason": v.reason,
            "revision": self.revision,
            "desired": desired,
            "applied": {engine: users.get(user_id) for engine, users in self.applied.items()},
            "enforcement": None
            if state is None
            else {
                "suspended": state.suspended,
                "reason": reason_name(state.reason),
                "decided_at_ms": state.decided_at_ms,
            },
            "lease": None
            if lease is None
            else {
                "lease_id": lease.lease_id,
                "granted": lease.granted,
                "used": lease.used,
                "remaining": lease.remaining,
            },
            "last_usage_at_ms": self.last_usage.get(user_id),
        }

    # ------------------------------------------------------------ writing

    def _compute_effective(self) -> DesiredState:
        return effective_desired(self.desired, self.enforcement)

    def _publish(self) -> None:
        effective = self._compute_effective()
        if effective == self._effective:
            return
        self._effective = effective
        for subscriber in self._subscribers:
            subscriber(effective)

    async def _store_desired(
        self,
        state: DesiredState,
        change: tuple[Sequence[DesiredUser], Iterable[str]] | None = None,
    ) -> None:
        """Journal then take `state`; `change` (upserts, removed ids): only those
        users are written (a burst of one-user changes stays cheap at 10k users)."""
        if change is None:
            await self.journal.set_desired(state.revision, encode_users(state.users))
        else:
            upserts, removed = change
            await self.journal.change_desired(state.revision, encode_users(upserts), removed)
        self.desired = state
        # Central's desired state is its truth: a suspension it commanded earlier
        # but no longer holds (its resume was sent while this node was away) ends.
        now = self.clock()
        lifted = [
            EnforcementState(user.user_id, False, current.reason, now)
            for user in state.users
            if not user.suspended
            and (current := self.enforcement.get(user.user_id)) is not None
            and current.suspended
            and current.reason not in LOCAL_REASONS
        ]
        if lifted:
            await self.journal.set_enforcement(lifted)
            self.enforcement = await self.journal.enforcement()
        await self._check_local_locked()
        self._publish()

    async def apply_snapshot(self, snapshot: v1.DesiredSnapshot) -> None:
        """Replace the desired state; RefusedInput (nothing changed) if malformed."""
        try:
            state = desired_from_wire(snapshot)
        except SpecError as e:
            raise RefusedInput(f"desired snapshot rev {snapshot.revision} refused: {e}") from None
        async with self._lock:
            if state.revision < self.desired.revision:
                log.warning(
                    "central sent revision %d, older than the %d held; taking it (central "
                    "is the source of truth)", state.revision, self.desired.revision,
                )  # fmt: skip
            await self._store_desired(state)

    async def apply_change(self, change: v1.DesiredChange) -> bool:
        """Apply a change on top of its base revision. False: a gap (the node
        holds another revision) -- the caller must get a snapshot."""
        try:
            upserts = [user_from_wire(spec) for spec in change.upserts]
        except SpecError as e:
            raise RefusedInput(f"desired change rev {change.revision} refused: {e}") from None
        if change.revision <= change.base_revision:
            raise RefusedInput(
                f"desired change rev {change.revision} is not after its base {change.base_revision}"
            )
        if any(not user_id for user_id in change.removed_user_ids):
            raise RefusedInput(f"desired change rev {change.revision} removes an empty user id")
        async with self._lock:
            # Central's changes follow the snapshot it sent on this stream, each on
            # top of the last: any other base means the node diverged.
            if change.base_revision != self.desired.revision:
                return False
            removed = set(change.removed_user_ids)
            by_id = {u.user_id: u for u in self.desired.users if u.user_id not in removed}
            for user in upserts:
                by_id[user.user_id] = user
            try:
                state = DesiredState(change.revision, tuple(by_id[k] for k in sorted(by_id)))
            except SpecError as e:
                raise RefusedInput(f"desired change rev {change.revision} refused: {e}") from None
            await self._store_desired(state, (upserts, removed))
            gone = [u for u in self.leases if u not in by_id]
            if gone:
                await self.journal.drop_leases(gone)
                self.leases = await self.journal.leases()
            return True

    async def apply_enforcement(self, enforcement: v1.Enforcement) -> None:
        commands = check_commands(enforcement.commands)
        now = self.clock()
        states = [
            EnforcementState(c.user_id, int(c.action) == int(v1.Action.SUSPEND), int(c.reason), now)
            for c in commands
        ]
        async with self._lock:
            await self.journal.set_enforcement(states)
            self.enforcement = await self.journal.enforcement()
            self._publish()

    async def grant_leases(self, grant: v1.LeaseGrant, *, complete: bool = False) -> int:
        """Take new leases. complete: the grant holds every lease central wants this
        node to have (the one after a connection's snapshot); others are dropped."""
        grants = check_leases(grant.leases)
        async with self._lock:
            taken = await self.journal.grant_leases(grants)
            if complete:
                granted = {user_id for user_id, _, _ in grants}
                stale = [u for u in self.leases if u not in granted]
                if stale:
                    await self.journal.drop_leases(stale)
                    log.info("leases central no longer grants dropped: %s", ", ".join(stale))
            self.leases = await self.journal.leases()
            await self._check_local_locked()
            self._publish()
        return taken

    async def commit_sample(
        self, sample: Sample, *, sampled_at_ms: int, epoch_marker: str | None = None
    ) -> tuple[int, int]:
        """Journal a sample (deltas + baselines, leases charged) in one transaction.
        Same signature as Journal.commit_sample: the Sampler commits through here."""
        crashpoint("after-read")  # counters read, nothing committed yet
        async with self._lock:
            seqs = await self.journal.commit_sample(
                sample, sampled_at_ms=sampled_at_ms, epoch_marker=epoch_marker
            )
            users, _, _ = delta_columns(sample.deltas)
            self.last_usage.update(zip(users, repeat(sampled_at_ms)))
            if users and self.leases:
                self.leases = await self.journal.leases()
            await self._check_local_locked()
            self._publish()
        if seqs != (0, 0):
            self.notify_outbox()
        return seqs

    async def check_local(self) -> list[LocalDecision]:
        """Take local decisions due now (expiry passed, lease spent or refilled)."""
        async with self._lock:
            decisions = await self._check_local_locked()
            self._publish()
        return decisions

    async def _check_local_locked(self) -> list[LocalDecision]:
        plan = decide(self.desired, self.leases, self.enforcement, self.clock())
        decisions = list(plan.decisions)
        if plan.states:
            await self.journal.set_enforcement(plan.states, decisions)
            self.enforcement = await self.journal.enforcement()
            for d in decisions:
                log.info(
                    "local decision: %s user %s (%s)",
                    "suspend" if d.action == int(v1.Action.SUSPEND) else "resume",
                    d.user_id, reason_name(d.reason),
                )  # fmt: skip
        return decisions

    async def compact_outbox(self) -> int:
        """Merge unsent deltas (one row per user, engine and epoch): a long outage
        grows the outbox by users, not by samples. Returns the rows saved."""
        async with self._lock:
            result = await self.journal.compact()
        return result.rows_before - result.rows_after

    async def record_applied(self, engine: str, users: Mapping[str, object]) -> None:
        """What an engine now holds per user (for explain); only differences are written."""
        async with self._lock:
            old = self.applied.get(engine, {})
            changes: dict[str, object | None] = {u: s for u, s in users.items() if old.get(u) != s}
            changes.update({u: None for u in old if u not in users})
            if changes:
                await self.journal.set_applied(engine, changes)
                self.applied[engine] = dict(users)

    # ------------------------------------------------------------ outbox signal

    def notify_outbox(self) -> None:
        self._outbox_changed.set()
        self._outbox_changed = trio.Event()

    async def wait_outbox(self, timeout: float) -> None:
        """Until new deltas are committed, or timeout seconds."""
        event = self._outbox_changed
        with trio.move_on_after(timeout):
            await event.wait()
