"""reconcile(desired, observed, now): table-style tests of the pure planner."""

from __future__ import annotations

import base64

import pytest

from edgeward.agent.model import (
    DesiredState,
    DesiredUser,
    ProxyProtocol,
    ProxyUser,
    make_wireguard_peer,
)
from edgeward.agent.reconcile import (
    Change,
    Engine,
    Observed,
    Update,
    reconcile,
    reconcile_proxies,
    reconcile_wireguard,
)

NOW = 1_700_000_000_000
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"


def vless(email: str, secret: str = U1, tag: str = "vless-in", flow: str = "") -> ProxyUser:
    return ProxyUser(tag, ProxyProtocol.VLESS, email, secret, flow)


def trojan(email: str, password: str, tag: str = "trojan-in") -> ProxyUser:
    return ProxyUser(tag, ProxyProtocol.TROJAN, email, password)


def user(uid: str, *proxies: ProxyUser, peers=(), expires: int = 0, suspended: bool = False):
    return DesiredUser(
        uid, tuple(proxies), tuple(peers), expires_at_ms=expires, suspended=suspended
    )


def state(*users: DesiredUser) -> DesiredState:
    return DesiredState(revision=7, users=tuple(users))


def wgkey(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def peer(n: int, *ips: str, psk: str = ""):
    return make_wireguard_peer(
        "t", interface="wg0", public_key=wgkey(n), allowed_ips=ips, preshared_key=psk
    )


A, B = vless("a@x", U1), vless("b@x", U2)

# (name, desired users, observed proxies, adds, removes, updates, refused user ids)
PROXY_CASES = [
    ("empty", [], [], [], [], [], []),
    ("add new", [user("ua", A)], [], [("ua", A)], [], [], []),
    ("already there", [user("ua", A)], [A], [], [], [], []),
    ("orphan removed", [], [A], [], [(None, A)], [], []),
    ("suspended absent", [user("ua", A, suspended=True)], [A], [], [(None, A)], [], []),
    ("expired absent", [user("ua", A, expires=NOW)], [], [], [], [], []),
    ("expires later present", [user("ua", A, expires=NOW + 1)], [], [("ua", A)], [], [], []),
    (
        "credential change is an update",
        [user("ua", vless("a@x", U3))],
        [A],
        [],
        [],
        [("ua", A, vless("a@x", U3))],
        [],
    ),
    (
        "flow change is an update",
        [user("ua", vless("a@x", U1, flow="xtls-rprx-vision"))],
        [A],
        [],
        [],
        [("ua", A, vless("a@x", U1, flow="xtls-rprx-vision"))],
        [],
    ),
    (
        "emails compare case-insensitively",
        [user("ua", vless("A@X", U1))],
        [A],
        [],
        [],
        [("ua", A, vless("A@X", U1))],
        [],
    ),
    (
        "duplicate UUID, no incumbent: both refused",
        [user("ua", A), user("ub", vless("b@x", U1))],
        [],
        [],
        [],
        [],
        ["ua", "ub"],
    ),
    (
        "duplicate UUID, incumbent keeps it",
        [user("ua", A), user("ub", vless("b@x", U1))],
        [A],
        [],
        [],
        [],
        ["ub"],
    ),
    (
        "duplicate UUID within one user",
        [user("ua", A, vless("a2@x", U1))],
        [],
        [],
        [],
        [],
        ["ua"],
    ),
    (
        "same UUID on different inbounds is fine",
        [user("ua", A), user("ub", vless("b@x", U1, tag="vless-2"))],
        [],
        [("ua", A), ("ub", vless("b@x", U1, tag="vless-2"))],
        [],
        [],
        [],
    ),
    (
        "UUID moves between users in one revision",
        [user("ua", vless("a@x", U3)), user("ub", vless("b@x", U1))],
        [A],
        [("ub", vless("b@x", U1))],
        [],
        [("ua", A, vless("a@x", U3))],
        [],
    ),
    (
        "duplicate trojan password refused",
        [user("ua", trojan("a@t", "pw")), user("ub", trojan("b@t", "pw"))],
        [trojan("a@t", "pw")],
        [],
        [],
        [],
        ["ub"],
    ),
    (
        "one email claimed by two users",
        [user("ua", A), user("ub", vless("A@x", U2))],
        [],
        [],
        [],
        [],
        ["ua", "ub"],
    ),
    (
        "refused user's existing credential stays, other users still applied",
        [user("ua", A), user("ub", vless("b@x", U1)), user("uc", vless("c@x", U3))],
        [A, B],
        [("uc", vless("c@x", U3))],
        [],
        [],
        ["ub"],
    ),
    (
        "newcomer colliding with a refused user's frozen credential is refused",
        # ub is refused (email clash with ud); ub's old b@x holds U2 in the core;
        # uc now wants U2 on c@x: applying it would duplicate U2.
        [
            user("ub", vless("b@x", U3)),
            user("ud", vless("B@x", U3)),
            user("uc", vless("c@x", U2)),
        ],
        [B],
        [],
        [],
        [],
        ["ub", "uc", "ud"],
    ),
    (
        "mixed protocols on one inbound: the minority refused",
        [
            user("ua", A),
            user("ub", B),
            user("uc", ProxyUser("vless-in", ProxyProtocol.VMESS, "c@x", U3)),
        ],
        [],
        [("ua", A), ("ub", B)],
        [],
        [],
        ["uc"],
    ),
]


@pytest.mark.parametrize(
    ("users", "observed", "adds", "removes", "updates", "refused"),
    [c[1:] for c in PROXY_CASES],
    ids=[c[0] for c in PROXY_CASES],
)
def test_proxy_plan(users, observed, adds, removes, updates, refused):
    plan = reconcile_proxies(state(*users), observed, NOW)
    assert sorted(plan.adds, key=str) == sorted((Change(u, p) for u, p in adds), key=str)
    assert sorted(plan.removes, key=str) == sorted((Change(u, p) for u, p in removes), key=str)
    assert list(plan.updates) == [Update(*u) for u in updates]
    assert [r.user_id for r in plan.refusals] == refused
    assert all(r.engine is Engine.PROXY for r in plan.refusals)


def test_duplicate_uuid_refusal_names_users_and_uuid():
    plan = reconcile_proxies(state(user("ua", A), user("ub", vless("b@x", U1))), [A], NOW)
    (refusal,) = plan.refusals
    text = str(refusal)
    assert "'ub'" in text and "'ua'" in text and U1 in text and "vless-in" in text
    assert plan.empty


def test_configured_inbound_protocol_wins_over_majority():
    users = [user("ua", A), user("ub", ProxyUser("vless-in", ProxyProtocol.VMESS, "b@x", U2))]
    plan = reconcile_proxies(
        state(*users), [], NOW, inbound_protocols={"vless-in": ProxyProtocol.VMESS}
    )
    assert [r.user_id for r in plan.refusals] == ["ua"]
    assert "which is a vmess inbound" in plan.refusals[0].reason
    assert plan.adds == (Change("ub", users[1].proxies[0]),)


def test_unmanaged_tags_are_never_touched():
    foreign = vless("ops@x", U3, tag="static-in")
    plan = reconcile_proxies(state(), [foreign, A], NOW, managed_tags={"vless-in"})
    assert plan.removes == (Change(None, A),)


def test_update_splits_into_remove_then_add():
    plan = reconcile_proxies(state(user("ua", vless("a@x", U3))), [A], NOW)
    removes, adds = plan.as_remove_then_add()
    assert removes == (Change("ua", A),)
    assert adds == (Change("ua", vless("a@x", U3)),)


def test_now_is_a_parameter():
    desired = state(user("ua", A, expires=NOW + 1000))
    assert reconcile_proxies(desired, [], NOW).adds
    assert not reconcile_proxies(desired, [], NOW + 1000).adds


# ---------------------------------------------------------------- WireGuard

WG_CASES = [
    (
        "add",
        [user("ua", peers=[peer(1, "10.0.0.2/32")])],
        [],
        [("ua", peer(1, "10.0.0.2/32"))],
        [],
        [],
        [],
    ),
    (
        "unchanged",
        [user("ua", peers=[peer(1, "10.0.0.2/32")])],
        [peer(1, "10.0.0.2/32")],
        [],
        [],
        [],
        [],
    ),
    ("orphan", [], [peer(1, "10.0.0.2/32")], [], [(None, peer(1, "10.0.0.2/32"))], [], []),
    (
        "allowed IPs change is an in-place update",
        [user("ua", peers=[peer(1, "10.0.0.2/32", "fd00::2/128")])],
        [peer(1, "10.0.0.2/32")],
        [],
        [],
        [("ua", peer(1, "10.0.0.2/32"), peer(1, "10.0.0.2/32", "fd00::2/128"))],
        [],
    ),
    (
        "preshared key change is an update",
        [user("ua", peers=[peer(1, "10.0.0.2/32", psk=wgkey(9))])],
        [peer(1, "10.0.0.2/32")],
        [],
        [],
        [("ua", peer(1, "10.0.0.2/32"), peer(1, "10.0.0.2/32", psk=wgkey(9)))],
        [],
    ),
    (
        "suspended removed",
        [user("ua", peers=[peer(1, "10.0.0.2/32")], suspended=True)],
        [peer(1, "10.0.0.2/32")],
        [],
        [(None, peer(1, "10.0.0.2/32"))],
        [],
        [],
    ),
    (
        "same allowed IP on two peers: newcomer refused",
        [user("ua", peers=[peer(1, "10.0.0.2/32")]), user("ub", peers=[peer(2, "10.0.0.2/32")])],
        [peer(1, "10.0.0.2/32")],
        [],
        [],
        [],
        ["ub"],
    ),
    (
        "same public key on two users: both refused",
        [user("ua", peers=[peer(1, "10.0.0.2/32")]), user("ub", peers=[peer(1, "10.0.0.3/32")])],
        [],
        [],
        [],
        [],
        ["ua", "ub"],
    ),
]


@pytest.mark.parametrize(
    ("users", "observed", "adds", "removes", "updates", "refused"),
    [c[1:] for c in WG_CASES],
    ids=[c[0] for c in WG_CASES],
)
def test_wireguard_plan(users, observed, adds, removes, updates, refused):
    plan = reconcile_wireguard(state(*users), observed, NOW)
    assert list(plan.adds) == [Change(u, p) for u, p in adds]
    assert list(plan.removes) == [Change(u, p) for u, p in removes]
    assert list(plan.updates) == [Update(*u) for u in updates]
    assert [r.user_id for r in plan.refusals] == refused


def test_reconcile_covers_both_engines_and_refuses_per_engine():
    # ub clashes on WireGuard only: its proxy credential is still applied.
    desired = state(
        user("ua", A, peers=[peer(1, "10.0.0.2/32")]),
        user("ub", B, peers=[peer(2, "10.0.0.2/32")]),
    )
    plan = reconcile(desired, Observed(proxies=[], wireguard=[peer(1, "10.0.0.2/32")]), NOW)
    assert sorted(c.user_id for c in plan.proxy.adds) == ["ua", "ub"]
    assert plan.wireguard.adds == ()
    assert [(r.user_id, r.engine) for r in plan.refusals] == [("ub", Engine.WIREGUARD)]


def test_unobserved_engine_gets_empty_plan():
    plan = reconcile(
        state(user("ua", A, peers=[peer(1, "10.0.0.2/32")])), Observed(proxies=[]), NOW
    )
    assert plan.proxy.adds and plan.wireguard.empty
