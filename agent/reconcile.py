"""The pure heart of applying users: `plan = reconcile(desired, observed, now_ms)`.

The plan holds, per engine, what to add, remove and update so that the engine
holds exactly the applied set: every credential of every user that is neither
suspended nor expired at `now_ms`. A credential change is an update; the core
driver performs it as remove+add (the core has no in-place update), the
WireGuard driver in place.

Some desired states would silently break a user if applied: one UUID (or
password) on two emails of the same inbound is accepted by the core, which then
routes the first user's connections to the second (DESIGN.md §2); one allowed
IP on two peers of one interface moves it to the last peer. Such users are
refused: the plan leaves everything of theirs on that engine as it is (no add,
no remove, no update) and carries a Refusal naming them. A claimant whose exact
credential is already in the engine (the incumbent) keeps it; the newcomers are
refused. Without an incumbent every claimant is refused, since which one is
right is unknowable.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from .model import UUID_PROTOCOLS, DesiredState, ProxyProtocol, ProxyUser, WireguardPeer


class Engine(enum.Enum):
    PROXY = "proxy"
    WIREGUARD = "wireguard"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A user the plan leaves untouched on one engine, and why."""

    user_id: str
    engine: Engine
    reason: str

    def __str__(self) -> str:
        return f"user {self.user_id!r} refused on {self.engine.value}: {self.reason}"


T = TypeVar("T", ProxyUser, WireguardPeer)


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """One item to add or remove; user_id is None for an orphan nobody desires."""

    user_id: str | None
    item: T


@dataclass(frozen=True, slots=True)
class Update(Generic[T]):
    user_id: str
    old: T
    new: T


@dataclass(frozen=True, slots=True)
class EnginePlan(Generic[T]):
    adds: tuple[Change[T], ...] = ()
    updates: tuple[Update[T], ...] = ()
    removes: tuple[Change[T], ...] = ()
    refusals: tuple[Refusal, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.adds or self.updates or self.removes)

    def as_remove_then_add(self) -> tuple[tuple[Change[T], ...], tuple[Change[T], ...]]:
        """(removes, adds) with each update split into remove-old + add-new.

        Run all removes before any add: an email or UUID may move between users
        within one revision, and the core must let go of it first.
        """
        removes = self.removes + tuple(Change(u.user_id, u.old) for u in self.updates)
        adds = tuple(Change(u.user_id, u.new) for u in self.updates) + self.adds
        return removes, adds


ProxyPlan = EnginePlan[ProxyUser]
WireguardPlan = EnginePlan[WireguardPeer]


@dataclass(frozen=True, slots=True)
class Observed:
    """What the engines hold now; None means "not observed": that engine's plan is empty."""

    proxies: Iterable[ProxyUser] | None = None
    wireguard: Iterable[WireguardPeer] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    proxy: ProxyPlan = field(default_factory=EnginePlan)
    wireguard: WireguardPlan = field(default_factory=EnginePlan)

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        return self.proxy.refusals + self.wireguard.refusals


# ---------------------------------------------------------------- per-engine rules


def _proxy_unique(user: ProxyUser) -> tuple[Hashable, ...]:
    return (user.secret_key,)


def _proxy_unique_label(user: ProxyUser, key: Hashable) -> str:
    what = "UUID" if user.protocol in UUID_PROTOCOLS else "secret"
    shown = user.secret if user.protocol in UUID_PROTOCOLS else "(hidden)"
    return f"{what} {shown} on inbound {user.inbound_tag!r}"


def _proxy_describe(user: ProxyUser) -> str:
    return f"email {user.email!r} on inbound {user.inbound_tag!r}"


def _wg_unique(peer: WireguardPeer) -> tuple[Hashable, ...]:
    return tuple((peer.interface, ip) for ip in peer.allowed_ips)


def _wg_unique_label(peer: WireguardPeer, key: Hashable) -> str:
    interface, ip = cast(tuple[str, str], key)
    return f"allowed IP {ip} on interface {interface!r}"


def _wg_describe(peer: WireguardPeer) -> str:
    return f"public key {peer.public_key} on interface {peer.interface!r}"


# ---------------------------------------------------------------- the generic planner


def _plan_engine(
    engine: Engine,
    claims: list[tuple[str, T]],
    observed: Iterable[T],
    ident: Callable[[T], Hashable],
    unique: Callable[[T], tuple[Hashable, ...]],
    unique_label: Callable[[T, Hashable], str],
    describe: Callable[[T], str],
    reasons: dict[str, str] | None = None,
) -> EnginePlan[T]:
    # Identical duplicates (same user, same item) are harmless: keep one.
    claims = list(dict.fromkeys(claims))
    observed_by_ident: dict[Hashable, T] = {ident(item): item for item in observed}

    def incumbent(claim: tuple[str, T]) -> bool:
        return observed_by_ident.get(ident(claim[1])) == claim[1]

    reasons = dict(reasons or {})

    def refuse_contested(
        groups: dict[Hashable, list[tuple[str, T]]], label: Callable[[T, Hashable], str]
    ) -> None:
        for key, claimants in groups.items():
            if len(claimants) < 2:
                continue
            keepers = [c for c in claimants if incumbent(c)]
            keep = keepers[0] if len(keepers) == 1 else None
            for claim in claimants:
                if claim == keep or claim[0] in reasons:
                    continue
                others = sorted(
                    {f"user {uid!r} ({describe(it)})" for uid, it in claimants if uid != claim[0]}
                    | {
                        f"its own {describe(it)}"
                        for uid, it in claimants
                        if uid == claim[0] and it != claim[1]
                    }
                )
                reasons[claim[0]] = (
                    f"{label(claimants[0][1], key)} for {describe(claim[1])} is also claimed by "
                    + ", ".join(others)
                    + " (the engine would accept both and break one of them)"
                )

    by_ident: dict[Hashable, list[tuple[str, T]]] = defaultdict(list)
    by_unique: dict[Hashable, list[tuple[str, T]]] = defaultdict(list)
    for claim in claims:
        key = ident(claim[1])
        by_ident[key].append(claim)
        for ukey in unique(claim[1]):
            # One identity may list a unique key once; two identities may not share it.
            if all(ident(it) != key for _, it in by_unique[ukey]):
                by_unique[ukey].append(claim)
    refuse_contested(by_ident, lambda item, key: describe(item))
    refuse_contested(by_unique, unique_label)

    # A refused user's items stay as they are in the engine; an item to be
    # added must not collide with such a frozen item either. Refusing more
    # users freezes more items, so repeat until nothing changes (bounded by
    # the number of users).
    while True:
        frozen_idents = {ident(it) for uid, it in claims if uid in reasons}
        target = {ident(it): (uid, it) for uid, it in claims if uid not in reasons}
        staying = [
            it
            for key, it in observed_by_ident.items()
            if key in frozen_idents or (key in target and target[key][1] == it)
        ]
        held = {ukey: it for it in staying for ukey in unique(it)}
        newly = False
        for key, (uid, it) in target.items():
            if observed_by_ident.get(key) == it:
                continue
            for ukey in unique(it):
                holder = held.get(ukey)
                if holder is not None and ident(holder) != key:
                    reasons[uid] = (
                        f"{unique_label(it, ukey)} for {describe(it)} is held in the engine by "
                        f"{describe(holder)}, which stays (its user is refused)"
                    )
                    newly = True
                    break
        if not newly:
            break

    adds: list[Change[T]] = []
    updates: list[Update[T]] = []
    removes: list[Change[T]] = []
    for key, (uid, it) in target.items():
        old = observed_by_ident.get(key)
        if old is None:
            adds.append(Change(uid, it))
        elif old != it:
            updates.append(Update(uid, old, it))
    for key, it in observed_by_ident.items():
        if key not in target and key not in frozen_idents:
            removes.append(Change(None, it))
    refusals = tuple(Refusal(uid, engine, reasons[uid]) for uid in sorted(reasons))
    return EnginePlan(tuple(adds), tuple(updates), tuple(removes), refusals)


# ---------------------------------------------------------------- public API


def applied_claims(desired: DesiredState, now_ms: int) -> tuple[list, list]:
    """(proxy claims, wireguard claims) of the users active at now_ms, as (user_id, item)."""
    proxies: list[tuple[str, ProxyUser]] = []
    peers: list[tuple[str, WireguardPeer]] = []
    for user in desired.users:
        if not user.is_active(now_ms):
            continue
        proxies.extend((user.user_id, p) for p in user.proxies)
        peers.extend((user.user_id, w) for w in user.wireguard)
    return proxies, peers


def _inbound_protocol_reasons(
    claims: list[tuple[str, ProxyUser]],
    observed: list[ProxyUser],
    inbound_protocols: Mapping[str, ProxyProtocol],
) -> dict[str, str]:
    """Users whose credential's protocol is not the inbound's.

    v2fly 4.34 panics (the whole core exits) when, say, a VLESS account is added
    to a VMess inbound, so this is checked before anything reaches the core.
    The inbound's protocol is, in order: configured, seen on users the core
    already holds there, or the one most claims use (a tie refuses them all).
    """
    by_tag: dict[str, Counter[ProxyProtocol]] = defaultdict(Counter)
    for _, user in claims:
        by_tag[user.inbound_tag][user.protocol] += 1
    seen: dict[str, Counter[ProxyProtocol]] = defaultdict(Counter)
    for user in observed:
        seen[user.inbound_tag][user.protocol] += 1
    expected: dict[str, ProxyProtocol | None] = {}
    for tag, counts in by_tag.items():
        if tag in inbound_protocols:
            expected[tag] = inbound_protocols[tag]
        elif len(counts) == 1:
            continue
        else:
            ranked = (seen[tag] or counts).most_common(2)
            tie = len(ranked) == 2 and ranked[0][1] == ranked[1][1]
            expected[tag] = None if tie else ranked[0][0]
    reasons: dict[str, str] = {}
    for uid, user in claims:
        if user.inbound_tag not in expected or uid in reasons:
            continue
        want = expected[user.inbound_tag]
        if want is None:
            reasons[uid] = (
                f"inbound {user.inbound_tag!r} is claimed with mixed protocols "
                f"({', '.join(sorted(p.value for p in by_tag[user.inbound_tag]))}) and its "
                f"own protocol is unknown; {user.protocol.value} for {user.email!r} refused"
            )
        elif user.protocol is not want:
            reasons[uid] = (
                f"{user.protocol.value} credential {user.email!r} on inbound "
                f"{user.inbound_tag!r}, which is a {want.value} inbound"
            )
    return reasons


def reconcile_proxies(
    desired: DesiredState,
    observed: Iterable[ProxyUser],
    now_ms: int,
    *,
    managed_tags: Iterable[str] | None = None,
    inbound_protocols: Mapping[str, ProxyProtocol] | None = None,
) -> ProxyPlan:
    """The proxy-core plan. Observed users on tags outside managed_tags are left alone."""
    observed = list(observed)
    if managed_tags is not None:
        tags = set(managed_tags)
        observed = [u for u in observed if u.inbound_tag in tags]
    claims, _ = applied_claims(desired, now_ms)
    reasons = _inbound_protocol_reasons(claims, observed, inbound_protocols or {})
    return _plan_engine(
        Engine.PROXY,
        claims,
        observed,
        lambda u: u.key,
        _proxy_unique,
        _proxy_unique_label,
        _proxy_describe,
        reasons,
    )


def reconcile_wireguard(
    desired: DesiredState,
    observed: Iterable[WireguardPeer],
    now_ms: int,
    *,
    managed_interfaces: Iterable[str] | None = None,
) -> WireguardPlan:
    """The WireGuard plan: updates are in-place peer updates (allowed IPs, preshared key)."""
    if managed_interfaces is not None:
        names = set(managed_interfaces)
        observed = [p for p in observed if p.interface in names]
    _, claims = applied_claims(desired, now_ms)
    return _plan_engine(
        Engine.WIREGUARD,
        claims,
        observed,
        lambda p: p.key,
        _wg_unique,
        _wg_unique_label,
        _wg_describe,
    )


def reconcile(
    desired: DesiredState,
    observed: Observed,
    now_ms: int,
    *,
    inbound_protocols: Mapping[str, ProxyProtocol] | None = None,
) -> Plan:
    """Both engines' plans; an engine whose observed state is None gets an empty plan."""
    proxy: ProxyPlan = (
        reconcile_proxies(desired, observed.proxies, now_ms, inbound_protocols=inbound_protocols)
        if observed.proxies is not None
        else EnginePlan()
    )
    wireguard: WireguardPlan = (
        reconcile_wireguard(desired, observed.wireguard, now_ms)
        if observed.wireguard is not None
        else EnginePlan()
    )
    return Plan(proxy, wireguard)
