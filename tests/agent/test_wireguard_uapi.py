"""The WireGuard driver against real wireguard-go in two namespaces, checked
against wireguard-tools' `wg show dump` as the independent reader."""

from __future__ import annotations

import base64
import re

import pytest

from edgeward.agent.wg_uapi import UapiBackend
from edgeward.agent.wireguard import (
    InvalidPeerError,
    PeerConfig,
    PeerRejectedError,
    UnknownInterfaceError,
    WireGuard,
)
from tests.support.wgnet import WgEnd, WgPair, run


def peer_of(end: WgEnd, **extra) -> PeerConfig:
    return PeerConfig(
        public_key=end.public_key,
        allowed_ips=(end.tunnel_cidr,),
        endpoint=end.endpoint,
        **extra,
    )


def fake_key(i: int) -> str:
    """Any 32 bytes make a public key the device accepts."""
    return base64.b64encode(bytes([i + 1]) * 32).decode()


def new_key() -> str:
    return run("wg", "pubkey", input=run("wg", "genkey")).strip()


async def connect(wg: WireGuard, pair: WgPair) -> None:
    for end in pair.ends():
        await wg.upsert_peer(end.iface, peer_of(pair.other(end)))


async def test_peer_added_by_driver_carries_traffic_counted_like_wg_sees_it(wg_pair):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    assert wg.backend_for(a.iface).name == "uapi"
    await connect(wg, wg_pair)

    assert wg_pair.ping(a, b.tunnel, count=5, size=1200)
    (peer_b,) = await wg_pair.read_checked_by_wg(a, lambda: wg.peers(a.iface))
    assert peer_b.public_key == b.public_key
    assert peer_b.allowed_ips == (b.tunnel_cidr,)
    assert peer_b.rx_bytes > 5 * 1200 and peer_b.tx_bytes > 5 * 1200
    assert peer_b.last_handshake is not None
    (peer_a,) = await wg_pair.read_checked_by_wg(b, lambda: wg.peers(b.iface))
    assert peer_a.public_key == a.public_key and peer_a.rx_bytes > 5 * 1200

    await wg.remove_peer(a.iface, b.public_key)
    assert await wg.peers(a.iface) == []
    assert wg_pair.wg_dump_peers(a) == {}
    assert not wg_pair.ping(a, b.tunnel, count=2, deadline=2)
    # removing an absent peer is a no-op, like the device's own semantics
    await wg.remove_peer(a.iface, b.public_key)
    assert await wg.peers(a.iface) == []


async def test_upsert_makes_the_peer_exactly_as_described(wg_pair):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    psk = run("wg", "genpsk").strip()
    wide = peer_of(b, preshared_key=psk)
    wide = PeerConfig(**{**wide.__dict__, "allowed_ips": (b.tunnel_cidr, "203.0.113.0/24")})
    await wg.upsert_peer(a.iface, wide)
    await wg.upsert_peer(a.iface, wide)  # idempotent
    (state,) = await wg_pair.read_checked_by_wg(a, lambda: wg.peers(a.iface))
    assert sorted(state.allowed_ips) == sorted([b.tunnel_cidr, "203.0.113.0/24"])
    assert state.has_preshared_key

    await wg.upsert_peer(a.iface, peer_of(b))  # narrower, no preshared key
    (state,) = await wg_pair.read_checked_by_wg(a, lambda: wg.peers(a.iface))
    assert state.allowed_ips == (b.tunnel_cidr,)
    assert not state.has_preshared_key


async def test_many_peers_with_repeated_allowed_ips_parse_fully(wg_pair):
    wg = WireGuard()
    a = wg_pair.a
    wanted = {}
    for i in range(60):
        key = new_key() if i < 3 else fake_key(i)
        wanted[key] = (f"10.{i}.0.0/24", f"10.{i}.1.0/24", f"fd00:{i + 1:x}::/64")
    batch = [PeerConfig(public_key=k, allowed_ips=v) for k, v in wanted.items()]
    await wg.upsert_peer(a.iface, batch[0])
    await wg.upsert_peers(a.iface, batch[1:])
    peers = await wg_pair.read_checked_by_wg(a, lambda: wg.peers(a.iface))
    assert {p.public_key: tuple(sorted(p.allowed_ips)) for p in peers} == {
        k: tuple(sorted(v)) for k, v in wanted.items()
    }


async def test_recreated_interface_is_a_new_instance_without_peers(wg_pair):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    await connect(wg, wg_pair)
    assert wg_pair.ping(a, b.tunnel, count=1)
    before = await wg.instance(a.iface)
    assert await wg.instance(a.iface) == before  # stable while the device lives
    assert await wg.instance(b.iface) != before

    wg_pair.recreate(a)
    (old_pid,) = wg_pair.retired_pids
    assert old_pid != a.proc.pid
    after = await wg.instance(a.iface)
    assert f"pid={a.proc.pid}," in after.token
    assert after != before
    assert after.iface == before.iface == a.iface
    assert await wg.peers(a.iface) == []
    # re-filling the new instance restores the tunnel
    await wg.upsert_peer(a.iface, peer_of(b))
    assert wg_pair.ping(a, b.tunnel, count=1)


BAD_PEERS = [
    (PeerConfig(public_key="not-a-key", allowed_ips=("198.51.100.9/32",)), "not valid base64"),
    (PeerConfig(public_key="AAAA", allowed_ips=("198.51.100.9/32",)), "decodes to 3 bytes"),
    (PeerConfig(public_key=fake_key(9), allowed_ips=("198.51.100.9",)), "not in CIDR form"),
    (PeerConfig(public_key=fake_key(9), allowed_ips=("198.51.100.300/32",)), "not a valid"),
    (PeerConfig(public_key=fake_key(9), allowed_ips=("198.51.100.9/24",)), "host bits set"),
    (PeerConfig(public_key=fake_key(9), preshared_key="short"), "preshared key"),
    (PeerConfig(public_key=fake_key(9), endpoint="192.0.2.2"), "host:port"),
    (PeerConfig(public_key=fake_key(9), persistent_keepalive=70000), "0..65535"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_PEERS)
async def test_bad_peer_is_refused_and_changes_nothing(wg_pair, bad, message):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    await wg.upsert_peer(a.iface, peer_of(b))
    before, dump_before = await wg.peers(a.iface), wg_pair.wg_dump_peers(a)

    with pytest.raises(InvalidPeerError, match=message):
        await wg.upsert_peer(a.iface, bad)
    assert await wg.peers(a.iface) == before
    assert wg_pair.wg_dump_peers(a) == dump_before


async def test_batch_with_one_bad_peer_is_refused_whole(wg_pair):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    await wg.upsert_peer(a.iface, peer_of(b))
    before = await wg.peers(a.iface)
    batch = [PeerConfig(public_key=fake_key(1), allowed_ips=("203.0.113.1/32",)),
             PeerConfig(public_key=fake_key(2), allowed_ips=("203.0.113.300/32",))]  # fmt: skip
    with pytest.raises(InvalidPeerError, match=re.escape("203.0.113.300/32")):
        await wg.upsert_peers(a.iface, batch)
    assert await wg.peers(a.iface) == before


async def test_bad_key_on_remove_is_refused_and_changes_nothing(wg_pair):
    wg = WireGuard()
    a, b = wg_pair.a, wg_pair.b
    await wg.upsert_peer(a.iface, peer_of(b))
    before = await wg.peers(a.iface)
    with pytest.raises(InvalidPeerError, match="public key 'xyz' is not valid base64"):
        await wg.remove_peer(a.iface, "xyz")
    assert await wg.peers(a.iface) == before


async def test_device_errno_names_the_peer_and_errno(wg_pair):
    """A request the device itself refuses (bypassing validation) comes back
    as PeerRejectedError carrying the peer and the negative errno."""
    a, b = wg_pair.a, wg_pair.b
    uapi = UapiBackend("/var/run/wireguard")
    await uapi.upsert_peer(a.iface, peer_of(b))
    before = await uapi.peers(a.iface)
    with pytest.raises(
        PeerRejectedError, match=re.escape(f"peer {b.public_key}: errno -22")
    ) as info:
        await uapi.set_raw(a.iface, "set=1\nlisten_port=notaport\n\n", b.public_key)
    assert info.value.errno == -22
    assert await uapi.peers(a.iface) == before


async def test_unknown_interface_is_a_clear_error(wg_pair):
    wg = WireGuard()
    with pytest.raises(UnknownInterfaceError, match="unknown WireGuard interface 'ewt-nosuch0'"):
        await wg.peers("ewt-nosuch0")
    with pytest.raises(UnknownInterfaceError, match="'ewt-nosuch0'"):
        await wg.upsert_peer("ewt-nosuch0", peer_of(wg_pair.b))
    # the existing interface is untouched
    assert await wg.peers(wg_pair.a.iface) == []
