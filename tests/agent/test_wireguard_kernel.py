"""The WireGuard driver against real kernel WireGuard (netlink backend).

These run only inside the project's QEMU VM (tests/vm/wgvm.sh sets
EDGEWARD_WGVM=1 and loads the wireguard module); outside it they skip, and
tests/vm/test_kernel_wireguard_vm.py runs them in one VM boot.
"""

from __future__ import annotations

import base64
import re

import pytest
import trio

from edgeward.agent.wg_netlink import NetlinkBackend
from edgeward.agent.wireguard import (
    InvalidPeerError,
    PeerConfig,
    UnknownInterfaceError,
    WireGuard,
)
from tests.support.wgnet import WGVM_ENV, WgEnd, in_wgvm

pytestmark = [
    pytest.mark.wgvm,
    pytest.mark.skipif(
        not in_wgvm(), reason=f"kernel WireGuard: only inside tests/vm ({WGVM_ENV}=1)"
    ),
]


def peer_of(end: WgEnd) -> PeerConfig:
    return PeerConfig(
        public_key=end.public_key, allowed_ips=(end.tunnel_cidr,), endpoint=end.endpoint
    )


def key_of(i: int) -> str:
    """Distinct 32-byte public keys; the device accepts any 32 bytes."""
    return base64.b64encode(i.to_bytes(4, "big") * 8).decode()


def driver_for(end: WgEnd) -> WireGuard:
    return WireGuard(netns=end.ns)


async def dump_message_count(end: WgEnd) -> int:
    backend = NetlinkBackend(netns=end.ns)
    return len(await trio.to_thread.run_sync(backend._dump_sync, end.iface))


async def test_kernel_peer_carries_traffic_counted_exactly(kernel_wg_pair):
    pair = kernel_wg_pair
    a, b = pair.a, pair.b
    wg_a, wg_b = driver_for(a), driver_for(b)
    assert wg_a.backend_for(a.iface).name == "netlink"
    await wg_a.upsert_peer(a.iface, peer_of(b))
    await wg_b.upsert_peer(b.iface, peer_of(a))

    assert pair.ping(a, b.tunnel, count=5, size=1200)
    (peer_b,) = await pair.read_checked_by_wg(a, lambda: wg_a.peers(a.iface))
    (peer_a,) = await pair.read_checked_by_wg(b, lambda: wg_b.peers(b.iface))
    assert peer_a.public_key == a.public_key
    assert peer_b.public_key == b.public_key and peer_b.allowed_ips == (b.tunnel_cidr,)
    assert peer_b.tx_bytes > 5 * 1200 and peer_b.last_handshake is not None
    # the kernel counts the same bytes at both ends of the tunnel (read
    # while no keepalive is in flight: both ends unchanged across the reads)
    for _ in range(5):
        a1, b1 = await wg_a.peers(a.iface), await wg_b.peers(b.iface)
        a2, b2 = await wg_a.peers(a.iface), await wg_b.peers(b.iface)
        if (a1, b1) == (a2, b2):
            break
    assert (a1, b1) == (a2, b2), "the tunnel never went quiet"
    assert (a1[0].tx_bytes, a1[0].rx_bytes) == (b1[0].rx_bytes, b1[0].tx_bytes)

    await wg_a.remove_peer(a.iface, b.public_key)
    assert await wg_a.peers(a.iface) == []
    assert pair.wg_dump_peers(a) == {}
    assert not pair.ping(a, b.tunnel, count=1, deadline=2)


async def test_hundreds_of_peers_and_a_split_peer_read_back_whole(kernel_wg_pair):
    """320 peers and one peer with 3000 allowed IPs: the dump spans several
    messages and that peer is split across two of them."""
    pair = kernel_wg_pair
    a, b = pair.a, pair.b
    wg = driver_for(a)
    big = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(3000))
    wanted = {b.public_key: (b.tunnel_cidr,), key_of(0): big}
    for i in range(1, 321):
        wanted[key_of(i)] = (f"172.16.{i // 256}.{i % 256}/32", f"fd00:{i:x}::/64")
    await wg.upsert_peer(a.iface, peer_of(b))
    others = [
        PeerConfig(public_key=k, allowed_ips=v) for k, v in wanted.items() if k != b.public_key
    ]
    await wg.upsert_peers(a.iface, others)
    await driver_for(b).upsert_peer(b.iface, peer_of(a))
    assert pair.ping(a, b.tunnel, count=2, size=800)  # the real peer works among the others

    assert await dump_message_count(a) > 2, "the dump must be split to exercise merging"
    peers = await pair.read_checked_by_wg(a, lambda: wg.peers(a.iface))
    assert {p.public_key: tuple(sorted(p.allowed_ips)) for p in peers} == {
        k: tuple(sorted(v)) for k, v in wanted.items()
    }
    real = next(p for p in peers if p.public_key == b.public_key)
    assert real.rx_bytes > 2 * 800 and real.last_handshake is not None


async def test_kernel_recreation_bad_input_and_unknown_interfaces(kernel_wg_pair):
    pair = kernel_wg_pair
    a, b = pair.a, pair.b
    wg = driver_for(a)
    await wg.upsert_peer(a.iface, peer_of(b))
    before, dump_before = await wg.peers(a.iface), pair.wg_dump_peers(a)

    with pytest.raises(InvalidPeerError, match="not in CIDR form"):
        await wg.upsert_peer(a.iface, PeerConfig(public_key=key_of(7), allowed_ips=("10.0.0.1",)))
    with pytest.raises(InvalidPeerError, match="decodes to 3 bytes"):
        await wg.upsert_peer(a.iface, PeerConfig(public_key="AAAA"))
    with pytest.raises(UnknownInterfaceError, match=re.escape("'ewnosuch0': no such device")):
        await wg.upsert_peer("ewnosuch0", peer_of(b))
    with pytest.raises(UnknownInterfaceError, match="not a WireGuard device"):
        await wg.peers(a.veth)
    assert await wg.peers(a.iface) == before
    assert pair.wg_dump_peers(a) == dump_before

    instance = await wg.instance(a.iface)
    assert instance.backend == "netlink"
    assert await wg.instance(a.iface) == instance
    pair.recreate(a)
    assert await wg.instance(a.iface) != instance
    assert await wg.peers(a.iface) == []
