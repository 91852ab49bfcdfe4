"""The daemon's WireGuard engine on real parts: a user central created (keys and address
from central) is applied as a peer to a real wireguard-go interface, real packets from a
client namespace are counted into central exactly, and a suspension removes the peer."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import replace

import trio

from edgeward.agent.config import WireguardSettings
from edgeward.agent.daemon import serve
from edgeward.central.desired import Inbound
from edgeward.proto import v1
from tests.central.helpers import make_pki
from tests.e2e.agent_setup import ADMIN, central_call, node_config, wait_for
from tests.e2e.central_thread import CentralThread
from tests.support.wgnet import WgPair, in_ns, ip_batch


def become_user(pair: WgPair, user, preshared_key: str, tmp_path) -> str:
    """Client end b takes the user's key and address (as the user's wg config would)."""
    key = tmp_path / "client.key"
    key.touch(mode=0o600)
    key.write_text(user.wg_private_key + "\n")
    args = ["set", pair.b.iface, "private-key", str(key), "peer", pair.a.public_key,
            "endpoint", pair.a.endpoint, "allowed-ips", pair.a.tunnel_cidr]  # fmt: skip
    if preshared_key:
        psk = tmp_path / "client.psk"
        psk.touch(mode=0o600)
        psk.write_text(preshared_key + "\n")
        args += ["preshared-key", str(psk)]
    pair.wg(pair.b, *args)
    address = str(ipaddress.ip_interface(user.wg_address).ip)
    ip_batch(pair.b.ns, f"addr add {address}/32 dev {pair.b.iface}")
    # The node routes the user's address into the tunnel (WireGuard picks the peer).
    network = ipaddress.ip_interface(user.wg_address).network.supernet(new_prefix=16)
    ip_batch(pair.a.ns, f"route add {network} dev {pair.a.iface}")
    return address


async def ping_as(pair: WgPair, source: str, count: int = 5, deadline: int = 0) -> bool:
    # An expected failure waits the whole deadline: callers keep it short then.
    def ping() -> bool:
        out = in_ns(pair.b.ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-s", "1000",
                    "-W", "1", "-w", str(deadline or 3 + count), "-I", source, pair.a.tunnel,
                    check=False)  # fmt: skip
        return f"{count} received" in out

    return await trio.to_thread.run_sync(ping)


async def test_wireguard_user_from_central_is_served_counted_and_suspended(tmp_path, wg_pair):
    a = wg_pair.a
    pki = make_pki(tmp_path / "pki")
    central = CentralThread(pki, tmp_path / "central.sqlite").start()
    try:
        storage = central.storage
        await central_call(central, storage.add_node, "node-a",
                           [Inbound(a.iface, v1.Engine.WIREGUARD)], actor=ADMIN)  # fmt: skip
        await central_call(central, storage.create_user, "alice", actor=ADMIN,
                           node_ids=["node-a"])  # fmt: skip
        alice = await central_call(central, storage.get_user, "alice")
        snapshot = await central_call(central, storage.snapshot, "node-a")
        psk = snapshot.users[0].wireguard[0].preshared_key  # what the node will apply
        source = become_user(wg_pair, alice, psk, tmp_path)
        config = node_config(tmp_path, pki, central.address)  # no proxy core: it stays down
        config = replace(config, wireguard=WireguardSettings(interfaces=[a.iface]))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop))
            await wait_for(
                lambda: alice.wg_public_key in wg_pair.wg_dump_peers(a), "alice's peer on a"
            )
            assert await ping_as(wg_pair, source)

            def device_bytes() -> int:
                peer = wg_pair.wg_dump_peers(a)[alice.wg_public_key]
                return peer["rx_bytes"] + peer["tx_bytes"]

            async def central_equals_device():
                user = await central_call(central, storage.get_user, "alice")
                return user.uplink_bytes + user.downlink_bytes == device_bytes() > 5000

            await wait_for(central_equals_device, "central's total to equal the device's")
            explained = daemon.node.explain("alice")
            peer = f"{a.iface}/{alice.wg_public_key}"
            assert explained["desired"]["wireguard"] == [peer]
            assert explained["applied"] == {"proxy": None, "wireguard": [peer]}
            await central_call(central, storage.set_suspended, "alice", True, actor=ADMIN,
                               why="test")  # fmt: skip
            await wait_for(
                lambda: alice.wg_public_key not in wg_pair.wg_dump_peers(a), "the peer removed"
            )
            assert not await ping_as(wg_pair, source, count=2, deadline=1)
            stop.set()
    finally:
        central.stop()
