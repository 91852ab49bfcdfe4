"""Keeping the proxy core equal to the desired state: epochs, re-fill, drift repair.

`CoreSync.run()` is a trio task. It polls the core's GetSysStats uptime; a
core that restarted (a new *epoch*: it forgot every API-added user and reset
every counter) is re-filled with the whole applied set without anyone asking.
Each pass is `reconcile` against what the core holds:

- Xray lists its users (GetInboundUsers), so orphans (in the core, desired by
  nobody) are removed and ghosts (desired, missing) are added on every pass;
- v2fly cannot list, so "what the core holds" is the record of what this
  agent applied in the current epoch (cleared when the epoch changes).

Restart evidence, strongest first: a re-add of a user this agent applied
succeeds instead of answering "already exists." (probed after any connection
loss); the uptime went down; the start time implied by the uptime moved later
by more than the uptime's one-second granularity allows. A core that is down
(connection refused) is retried with exponential backoff, never a crash.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import trio

from .core_driver import ApplyReport, CoreCallError, CoreDriver, CoreUnavailable
from .model import DesiredState, ProxyProtocol, ProxyUser
from .reconcile import Refusal, reconcile_proxies
from .sync_loop import PassLoop

# ---------------------------------------------------------------- pure epoch tracking


@dataclass(frozen=True, slots=True)
class Epoch:
    """One life of the core process. `id` is stable for that life (start time, ms)."""

    id: str
    started_at_ms: int


@dataclass(slots=True)
class EpochTracker:
    """Decides from uptime readings whether the core is still the same process.

    GetSysStats' uptime is whole seconds (truncated), so `now - uptime` lies
    within [start, start + 1 s) for one process; a later estimate beyond that
    window (plus `slack_s` for call latency) is another process.
    """

    known: Epoch | None = None  # e.g. from the journal, across agent restarts
    slack_s: float = 0.5
    _start_mono: float | None = None
    _last_uptime: int | None = None

    @property
    def observed(self) -> bool:
        """Whether any uptime was observed yet (the first one may start an epoch)."""
        return self._start_mono is not None

    def observe(self, uptime_s: int, now_mono: float, now_wall_ms: int) -> Epoch | None:
        """The new Epoch if this reading starts one, else None."""
        estimate = now_mono - uptime_s
        restarted = (
            self._start_mono is None
            or (self._last_uptime is not None and uptime_s < self._last_uptime)
            or estimate > self._start_mono + 1.0 + self.slack_s
        )
        self._last_uptime = uptime_s
        if not restarted:
            assert self._start_mono is not None
            self._start_mono = min(self._start_mono, estimate)
            return None
        first = self._start_mono is None
        self._start_mono = estimate
        started_ms = now_wall_ms - uptime_s * 1000
        if (
            first
            and self.known is not None
            and abs(started_ms - self.known.started_at_ms) <= (1.0 + self.slack_s) * 1000
        ):
            return None  # the core the journal remembers is still running
        self.known = Epoch(str(started_ms), started_ms)
        return self.known

    def force_new(self, uptime_s: int, now_mono: float, now_wall_ms: int) -> Epoch:
        """A restart proven another way (a forgotten user) starts an epoch now."""
        self._start_mono = now_mono - uptime_s
        self._last_uptime = uptime_s
        started_ms = now_wall_ms - uptime_s * 1000
        if self.known is not None and started_ms <= self.known.started_at_ms:
            started_ms = self.known.started_at_ms + 1  # ids stay distinct
        self.known = Epoch(str(started_ms), started_ms)
        return self.known


# ---------------------------------------------------------------- the loop


@dataclass(slots=True)
class PassReport:
    """The outcome of one reconcile pass."""

    revision: int
    epoch: str | None
    desired: int  # proxy credentials in the applied set
    applied: ApplyReport = field(default_factory=ApplyReport)
    refusals: tuple[Refusal, ...] = ()
    listed: bool = False  # observed state came from the core's own listing
    held: int = 0  # credentials the core holds for us after the pass

    @property
    def ok(self) -> bool:
        return not self.applied.errors

    def problems(self) -> list[tuple[str | None, str]]:
        """(user_id or None for an orphan, message) for every refusal and core error."""
        out: list[tuple[str | None, str]] = [(r.user_id, str(r)) for r in self.refusals]
        out += [(e.change.user_id, str(e)) for e in self.applied.errors]
        return out


def _wall_ms() -> int:
    return int(time.time() * 1000)


class CoreSync(PassLoop[PassReport]):
    """The trio task that owns the proxy core's user set.

    Use: `sync = CoreSync(driver)`, `nursery.start(sync.run)`, then
    `sync.set_desired(state)` whenever the desired state changes.
    """

    def __init__(
        self,
        driver: CoreDriver,
        *,
        desired: DesiredState | None = None,
        poll_interval: float = 1.0,
        drift_interval: float = 30.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        known_epoch: Epoch | None = None,
        on_epoch: Callable[[Epoch], Awaitable[None]] | None = None,
        on_pass: Callable[[PassReport], Awaitable[None]] | None = None,
        managed_tags: Iterable[str] = (),
        inbound_protocols: Mapping[str, ProxyProtocol] | None = None,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.driver = driver
        self._init_passes(desired, drift_interval)
        self.poll_interval = poll_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_epoch = on_epoch
        self.on_pass = on_pass
        self.extra_tags = frozenset(managed_tags)
        self.inbound_protocols = dict(inbound_protocols or {})
        self.wall_ms = wall_ms
        self.tracker = EpochTracker(known=known_epoch)
        self.epoch: Epoch | None = known_epoch
        self.epochs_seen = 0  # epochs started while running (the first one included)
        # Why the current epoch started: "first contact", "uptime", "forgotten user".
        self.epoch_evidence: str | None = None
        self.reachable = False
        # v2fly: what this agent applied in the current epoch, by (tag, email).
        self.applied: dict[tuple[str, str], ProxyUser] = {}
        self._generation = driver.connection_generation

    # ------------------------------------------------------------ the task

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = self.backoff_initial
        while True:
            try:
                await self._tick()
            except CoreUnavailable:
                # Down or restarting: keep trying, slower each time.
                self.reachable = False
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            except CoreCallError as e:
                # The core answered but refused a stats/listing/probe call; keep
                # polling, the reason stays visible.
                self.last_error = str(e)
            backoff = self.backoff_initial
            await self._sleep(self.poll_interval)

    async def _tick(self) -> None:
        stats = await self.driver.sys_stats()
        self.reachable = True
        now = trio.current_time()
        new_epoch = self.tracker.observe(stats.uptime, now, self.wall_ms())
        evidence = "uptime" if self.epoch is not None else "first contact"
        reconnected = self.driver.connection_generation != self._generation
        self._generation = self.driver.connection_generation
        if new_epoch is None and reconnected and self.applied:
            # Same uptime story, but the connection dropped: ask the core itself.
            user = next(iter(self.applied.values()))
            if await self.driver.try_add(user):
                new_epoch = self.tracker.force_new(stats.uptime, now, self.wall_ms())
                evidence = "forgotten user"
        if new_epoch is not None:
            self.epoch_evidence = evidence
            await self._start_epoch(new_epoch)
        if not self._pass_due(now):
            return
        self._dirty = False
        try:
            report = await self.sync_once()
        except CoreUnavailable:
            self._dirty = True
            raise
        except CoreCallError:
            self._dirty = True  # a listing failed: try again next poll
            return
        self._last_pass_at = now
        if not report.ok:
            self._dirty = True  # retry what failed on the next poll

    async def _start_epoch(self, epoch: Epoch) -> None:
        self.epoch = epoch
        self.epochs_seen += 1
        self.applied.clear()  # the new process holds none of our users
        self._dirty = True
        if self.on_epoch is not None:
            await self.on_epoch(epoch)

    def _expiry_due(self) -> bool:
        now = self.wall_ms()
        return any(
            u.expires_at_ms and u.expires_at_ms <= now and not u.suspended
            for u in self.desired.users
            if any(p.key in self.applied for p in u.proxies)
        )

    def managed_tags(self) -> list[str]:
        tags = set(self.extra_tags)
        for user in self.desired.users:
            tags.update(p.inbound_tag for p in user.proxies)
        tags.update(tag for tag, _ in self.applied)
        return sorted(tags)

    async def sync_once(self) -> PassReport:
        """One reconcile pass: observe, plan, apply, record."""
        tags = self.managed_tags()
        listed = await self.driver.observe_users(tags)
        observed = list(self.applied.values()) if listed is None else listed
        plan = reconcile_proxies(
            self.desired,
            observed,
            self.wall_ms(),
            managed_tags=tags,
            inbound_protocols=self.inbound_protocols,
        )
        applied = await self.driver.apply(plan) if not plan.empty else ApplyReport()
        if listed is not None:
            self.applied = {u.key: u for u in listed}
        for change in applied.removed:
            self.applied.pop(change.item.key, None)
        for change in applied.added:
            self.applied[change.item.key] = change.item
        desired_count = sum(
            len(u.proxies) for u in self.desired.users if u.is_active(self.wall_ms())
        )
        report = PassReport(
            revision=self.desired.revision,
            epoch=self.epoch.id if self.epoch else None,
            desired=desired_count,
            applied=applied,
            refusals=plan.refusals,
            listed=listed is not None,
            held=len(self.applied),
        )
        self.last_pass = report
        self.passes += 1
        if self.on_pass is not None:
            await self.on_pass(report)
        async with self._pass_done:
            self._pass_done.notify_all()
        if applied.unavailable:
            raise CoreUnavailable("the core went away during the pass")
        return report
