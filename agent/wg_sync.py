"""Keeping WireGuard interfaces equal to the desired state (the counterpart of CoreSync).

`WgSync.run()` is a trio task. Every poll it reads each managed interface's
instance identity (wireguard-go: serving PID + socket inode; kernel: ifindex).
An interface seen for the first time, one that reappeared, or one whose
identity changed (it was recreated: every peer gone) gets a reconcile pass at
once. Otherwise a pass runs when the desired state changed, when a user's
expiry passed, and every `drift_interval` (drift repair: peers added or
changed by hand are put back the way the desired state says).

Each pass is the pure `reconcile_wireguard(desired, observed)` against the
peers the device reports, applied in place: removes first (an allowed IP may
move between peers), then one upsert per added or changed peer, which
replaces the peer's allowed IPs and preshared key on the device.

The device never reports a preshared key, only whether one is set; the pass
remembers which key it set per peer, and a key it does not know (set by
someone else, or before a restart of this agent) counts as different, so the
desired key is written again.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from .model import DesiredState, WireguardPeer
from .reconcile import Change, Refusal, Update, reconcile_wireguard
from .sync_loop import PassLoop
from .wireguard import PeerConfig, PeerState, UnknownInterfaceError, WireGuard, WireGuardError

log = logging.getLogger(__name__)

# Stands for "a preshared key is set, but not one this agent knows".
UNKNOWN_PSK = "?"


@dataclass(slots=True)
class WgPassReport:
    """The outcome of one reconcile pass over the managed interfaces."""

    revision: int
    desired: int  # peers in the applied set
    added: int = 0
    updated: int = 0
    removed: int = 0
    refusals: tuple[Refusal, ...] = ()
    # (user_id or None for an orphan, message); an unreachable interface is one entry.
    errors: list[tuple[str | None, str]] = field(default_factory=list)
    missing: tuple[str, ...] = ()  # managed interfaces that do not exist (now)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.missing


def observed_peer(iface: str, state: PeerState, known_psk: str | None) -> WireguardPeer:
    """A device peer as the reconcile model sees it (pure)."""
    ips = tuple(sorted({str(ipaddress.ip_network(ip, strict=False)) for ip in state.allowed_ips}))
    psk = ""
    if state.has_preshared_key:
        psk = known_psk if known_psk else UNKNOWN_PSK
    return WireguardPeer(iface, state.public_key, ips, psk)


def peer_config(peer: WireguardPeer) -> PeerConfig:
    return PeerConfig(
        public_key=peer.public_key,
        allowed_ips=peer.allowed_ips,
        preshared_key=peer.preshared_key or None,
    )


def _wall_ms() -> int:
    return int(time.time() * 1000)


class WgSync(PassLoop["WgPassReport"]):
    """The trio task that owns the peers of the managed WireGuard interfaces.

    Use: `sync = WgSync(wg)`, `nursery.start(sync.run)`, then
    `sync.set_desired(state)` whenever the (effective) desired state changes.
    Managed interfaces: every interface named in the desired state plus
    `interfaces`; peers on other interfaces are never touched.
    """

    def __init__(
        self,
        wg: WireGuard,
        *,
        desired: DesiredState | None = None,
        interfaces: Iterable[str] = (),
        poll_interval: float = 1.0,
        drift_interval: float = 30.0,
        on_pass: Callable[[WgPassReport], Awaitable[None]] | None = None,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.wg = wg
        self._init_passes(desired, drift_interval)
        self.extra_interfaces = frozenset(interfaces)
        self.poll_interval = poll_interval
        self.on_pass = on_pass
        self.wall_ms = wall_ms
        self.instances: dict[str, str] = {}  # iface -> identity token last seen
        self.recreations = 0  # identity changes seen while running
        self._psk: dict[tuple[str, str], str] = {}  # (iface, public key) -> key we set
        self._held: set[tuple[str, str]] = set()  # peers on the devices after the last pass

    def managed_interfaces(self) -> list[str]:
        names = set(self.extra_interfaces)
        for user in self.desired.users:
            names.update(p.interface for p in user.wireguard)
        return sorted(names)

    # ------------------------------------------------------------ the task

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self._tick()
            except WireGuardError as e:  # a device refused a read: keep polling
                self.last_error = str(e)
                self._dirty = True
            await self._sleep(self.poll_interval)

    async def _tick(self) -> None:
        await self._watch_instances()
        now = trio.current_time()
        if not self._pass_due(now):
            return
        self._dirty = False
        report = await self.sync_once()
        self._last_pass_at = now
        if not report.ok:
            self._dirty = True  # retry what failed on the next poll

    async def _watch_instances(self) -> None:
        for iface in self.managed_interfaces():
            try:
                token = (await self.wg.instance(iface)).token
            except UnknownInterfaceError:
                if self.instances.pop(iface, None) is not None:
                    log.warning("WireGuard interface %s disappeared", iface)
                self._forget(iface)
                continue
            previous = self.instances.get(iface)
            if previous == token:
                continue
            if previous is not None:
                self.recreations += 1
                log.warning("WireGuard interface %s was recreated: re-applying its peers", iface)
            self._forget(iface)
            self.instances[iface] = token
            self._dirty = True

    def _forget(self, iface: str) -> None:
        self._psk = {k: v for k, v in self._psk.items() if k[0] != iface}

    def _expiry_due(self) -> bool:
        now = self.wall_ms()
        return any(
            u.expires_at_ms and u.expires_at_ms <= now and not u.suspended
            for u in self.desired.users
            if any(p.key in self._held for p in u.wireguard)
        )

    # ------------------------------------------------------------ one pass

    async def sync_once(self) -> WgPassReport:
        """Observe every managed interface, plan, apply, report."""
        now_ms = self.wall_ms()
        observed: list[WireguardPeer] = []
        missing: list[str] = []
        for iface in self.managed_interfaces():
            try:
                states = await self.wg.peers(iface)
            except UnknownInterfaceError:
                missing.append(iface)
                continue
            observed += [
                observed_peer(iface, s, self._psk.get((iface, s.public_key))) for s in states
            ]
        present = [i for i in self.managed_interfaces() if i not in missing]
        plan = reconcile_wireguard(self.desired, observed, now_ms, managed_interfaces=present)
        report = WgPassReport(
            revision=self.desired.revision,
            desired=sum(len(u.wireguard) for u in self.desired.users if u.is_active(now_ms)),
            refusals=plan.refusals,
            missing=tuple(missing),
        )
        report.errors += [(None, f"WireGuard interface {i!r} does not exist") for i in missing]
        held = {p.key for p in observed}
        await self._remove(plan.removes, report, held)
        # A missing interface is one error above, not one per peer.
        adds = [c for c in plan.adds if c.item.interface not in missing]
        await self._upsert(adds, plan.updates, report, held)
        self._held = held
        self.last_pass = report
        self.passes += 1
        if report.errors:
            self.last_error = report.errors[0][1]
        if self.on_pass is not None:
            await self.on_pass(report)
        async with self._pass_done:
            self._pass_done.notify_all()
        return report

    async def _remove(
        self,
        removes: Iterable[Change[WireguardPeer]],
        report: WgPassReport,
        held: set[tuple[str, str]],
    ) -> None:
        for change in removes:
            peer = change.item
            try:
                await self.wg.remove_peer(peer.interface, peer.public_key)
            except WireGuardError as e:
                report.errors.append((change.user_id, str(e)))
                continue
            report.removed += 1
            held.discard(peer.key)
            self._psk.pop(peer.key, None)

    async def _upsert(
        self,
        adds: Iterable[Change[WireguardPeer]],
        updates: Iterable[Update[WireguardPeer]],
        report: WgPassReport,
        held: set[tuple[str, str]],
    ) -> None:
        # One connection per interface; a device error stops that batch, so the
        # rest of it is retried one by one to name every failing peer.
        batches: dict[str, list[tuple[str, WireguardPeer, bool]]] = {}
        for change in adds:
            assert change.user_id is not None
            batches.setdefault(change.item.interface, []).append(
                (change.user_id, change.item, False)
            )
        for update in updates:
            batches.setdefault(update.new.interface, []).append((update.user_id, update.new, True))
        for iface, batch in batches.items():
            try:
                await self.wg.upsert_peers(iface, [peer_config(p) for _, p, _ in batch])
                done = batch
            except WireGuardError:
                done = []
                for item in batch:
                    try:
                        await self.wg.upsert_peer(iface, peer_config(item[1]))
                    except WireGuardError as e:
                        report.errors.append((item[0], str(e)))
                    else:
                        done.append(item)
            for _, peer, is_update in done:
                held.add(peer.key)
                if peer.preshared_key:
                    self._psk[peer.key] = peer.preshared_key
                else:
                    self._psk.pop(peer.key, None)
                if is_update:
                    report.updated += 1
                else:
                    report.added += 1
