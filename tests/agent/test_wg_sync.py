"""WgSync against real wireguard-go in two namespaces: end `a` is the node the
agent manages, end `b` a client configured with wireguard-tools. `wg show
dump` is the independent reader of what the device holds."""

from __future__ import annotations

import functools

import trio

from edgeward.agent.model import DesiredState, DesiredUser, make_wireguard_peer
from edgeward.agent.wg_sync import UNKNOWN_PSK, WgSync, observed_peer
from edgeward.agent.wireguard import PeerState, WireGuard
from tests.support.wgnet import WgPair, run

EXTRA_NET = "203.0.113.0/24"


def desired_for(pair: WgPair, *, extra: bool = False, psk: str = "", **user) -> DesiredState:
    ips = [pair.b.tunnel_cidr] + ([EXTRA_NET] if extra else [])
    peer = make_wireguard_peer(
        "client-b", interface=pair.a.iface, public_key=pair.b.public_key, allowed_ips=ips,
        preshared_key=psk,
    )  # fmt: skip
    return DesiredState(revision=1, users=(DesiredUser("client-b", wireguard=(peer,), **user),))


def connect_client(pair: WgPair, psk_file: str | None = None) -> None:
    """The client end knows the node (as a user's wg config would)."""
    args = ["set", pair.b.iface, "peer", pair.a.public_key, "endpoint", pair.a.endpoint,
            "allowed-ips", pair.a.tunnel_cidr]  # fmt: skip
    if psk_file:
        args += ["preshared-key", psk_file]
    pair.wg(pair.b, *args)


async def ping(pair: WgPair, **kw) -> bool:
    # The client sends first: the node learns its endpoint from the handshake.
    return await trio.to_thread.run_sync(functools.partial(pair.ping, pair.b, pair.a.tunnel, **kw))


def test_observed_peer_normalises_and_marks_unknown_preshared_keys():
    state = PeerState("K", ("10.0.0.2/32", "10.0.1.0/24"), True, 5, 6, None)
    peer = observed_peer("wg0", state, None)
    assert peer.allowed_ips == ("10.0.0.2/32", "10.0.1.0/24")
    assert peer.preshared_key == UNKNOWN_PSK
    assert observed_peer("wg0", state, "PSK").preshared_key == "PSK"
    bare = PeerState("K", (), False, 0, 0, None)
    assert observed_peer("wg0", bare, "PSK").preshared_key == ""


async def test_add_update_remove_in_place_with_traffic(wg_pair):
    a, b = wg_pair.a, wg_pair.b
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair))
    connect_client(wg_pair)
    assert not await ping(wg_pair, count=1, deadline=2)  # the node does not know b yet

    report = await sync.sync_once()
    assert (report.added, report.updated, report.removed, report.errors) == (1, 0, 0, [])
    assert await ping(wg_pair, count=5, size=1000)
    dump = wg_pair.wg_dump_peers(a)
    assert dump[b.public_key]["allowed_ips"] == (b.tunnel_cidr,)
    before = dump[b.public_key]["rx_bytes"]
    assert before > 5 * 1000

    # a second pass has nothing to do
    report = await sync.sync_once()
    assert (report.added, report.updated, report.removed) == (0, 0, 0)

    # credential change: in place, the peer (and its counters) stays
    sync.set_desired(desired_for(wg_pair, extra=True))
    report = await sync.sync_once()
    assert (report.added, report.updated, report.removed) == (0, 1, 0)
    dump = wg_pair.wg_dump_peers(a)
    assert sorted(dump[b.public_key]["allowed_ips"]) == sorted([b.tunnel_cidr, EXTRA_NET])
    assert dump[b.public_key]["rx_bytes"] >= before
    assert await ping(wg_pair, count=2)

    # the user is gone from the desired state: the peer goes, traffic stops
    sync.set_desired(DesiredState(revision=2))
    sync.extra_interfaces = frozenset({a.iface})
    report = await sync.sync_once()
    assert (report.added, report.updated, report.removed) == (0, 0, 1)
    assert wg_pair.wg_dump_peers(a) == {}
    assert not await ping(wg_pair, count=2, deadline=2)


async def test_drift_is_repaired_and_foreign_interfaces_are_left_alone(wg_pair):
    a, b = wg_pair.a, wg_pair.b
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair))
    await sync.sync_once()
    orphan = run("wg", "pubkey", input=run("wg", "genkey")).strip()
    # by hand on the node: an orphan peer and a changed allowed IP
    wg_pair.wg(a, "set", a.iface, "peer", orphan, "allowed-ips", "192.0.2.200/32")
    wg_pair.wg(a, "set", a.iface, "peer", b.public_key, "allowed-ips", EXTRA_NET)
    # and a peer on an interface this node does not manage
    wg_pair.wg(b, "set", b.iface, "peer", orphan, "allowed-ips", "192.0.2.201/32")

    report = await sync.sync_once()
    assert (report.updated, report.removed) == (1, 1)
    assert {k: v["allowed_ips"] for k, v in wg_pair.wg_dump_peers(a).items()} == {
        b.public_key: (b.tunnel_cidr,)
    }
    assert orphan in wg_pair.wg_dump_peers(b)


async def test_preshared_key_is_applied_and_not_rewritten_until_unknown(wg_pair, tmp_path):
    a, b = wg_pair.a, wg_pair.b
    psk = run("wg", "genpsk").strip()
    psk_file = tmp_path / "psk"
    psk_file.write_text(psk + "\n")
    connect_client(wg_pair, str(psk_file))
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair, psk=psk))
    assert (await sync.sync_once()).added == 1
    assert wg_pair.wg_dump_peers(a)[b.public_key]["preshared"]
    assert await ping(wg_pair, count=2)  # same key on both ends, or no handshake
    assert (await sync.sync_once()).updated == 0

    # a fresh agent cannot read the key back: it writes the desired one once
    fresh = WgSync(WireGuard(), desired=desired_for(wg_pair, psk=psk))
    assert (await fresh.sync_once()).updated == 1
    assert (await fresh.sync_once()).updated == 0
    assert await ping(wg_pair, count=2)


async def test_expired_and_suspended_users_are_not_served(wg_pair):
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair, expires_at_ms=1))
    report = await sync.sync_once()
    assert (report.added, report.desired) == (0, 0)
    assert wg_pair.wg_dump_peers(wg_pair.a) == {}
    sync.set_desired(desired_for(wg_pair, suspended=True))
    assert (await sync.sync_once()).added == 0
    sync.set_desired(desired_for(wg_pair))
    assert (await sync.sync_once()).added == 1
    sync.set_desired(desired_for(wg_pair, expires_at_ms=sync.wall_ms() - 1))
    assert (await sync.sync_once()).removed == 1


async def test_recreated_interface_is_detected_and_refilled(wg_pair):
    a, b = wg_pair.a, wg_pair.b
    connect_client(wg_pair)
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair), poll_interval=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(sync.run)
        with trio.fail_after(15):
            while b.public_key not in wg_pair.wg_dump_peers(a):
                await sync.wait_pass()
        assert await ping(wg_pair, count=2)
        first = sync.instances[a.iface]

        await trio.to_thread.run_sync(wg_pair.recreate, a)  # all peers gone
        with trio.fail_after(15):
            while b.public_key not in wg_pair.wg_dump_peers(a):
                await trio.sleep(0.1)
        assert sync.recreations == 1
        assert sync.instances[a.iface] != first
        # The client's old session is void: it handshakes again after
        # WireGuard's keepalive + rekey timeouts (15 s) without answers.
        assert await ping(wg_pair, count=3, deadline=30)
        nursery.cancel_scope.cancel()


async def test_missing_interface_is_reported_and_nothing_else_changes(wg_pair):
    state = desired_for(wg_pair)
    ghost = make_wireguard_peer(
        "ghost", interface="ewgnosuch0", public_key=wg_pair.a.public_key, allowed_ips=[]
    )
    state = DesiredState(1, (*state.users, DesiredUser("ghost", wireguard=(ghost,))))
    report = await WgSync(WireGuard(), desired=state).sync_once()
    assert report.missing == ("ewgnosuch0",)
    assert report.errors == [(None, "WireGuard interface 'ewgnosuch0' does not exist")]
    assert not report.ok
    assert report.added == 1  # the existing interface was still served
    assert list(wg_pair.wg_dump_peers(wg_pair.a)) == [wg_pair.b.public_key]


async def test_drift_is_repaired_by_the_running_loop_without_being_asked(wg_pair):
    a, b = wg_pair.a, wg_pair.b
    sync = WgSync(WireGuard(), desired=desired_for(wg_pair), poll_interval=0.1, drift_interval=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(sync.run)
        with trio.fail_after(15):
            while b.public_key not in wg_pair.wg_dump_peers(a):
                await trio.sleep(0.1)
        wg_pair.wg(a, "set", a.iface, "peer", b.public_key, "remove")  # by hand
        with trio.fail_after(15):
            while b.public_key not in wg_pair.wg_dump_peers(a):
                await trio.sleep(0.1)
        assert sync.recreations == 0
        nursery.cancel_scope.cancel()
