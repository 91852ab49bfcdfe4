"""A WireGuard .conf from `edgeward users links` is accepted by `wg setconf` (after the
wg-quick-only keys are stripped, as wg-quick does) on a wireguard-go interface and
carries traffic to the node."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgeward import links
from tests.admin.fleet import ConnectedNode, running_fleet
from tests.central.backends import StorageBackend
from tests.support.wgnet import WgPair, in_ns, ip_batch

from .test_cli_nodes import hello


def test_a_generated_wireguard_conf_carries_traffic(
    tmp_path: Path, storage_backend: StorageBackend, wg_pair: WgPair
):
    node, client = wg_pair.a, wg_pair.b
    with running_fleet(tmp_path / "fleet", storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", node.underlay, "--inbound",
                 f"tag={node.iface},protocol=wireguard,port={node.listen_port},"
                 f"public_key={node.public_key},allowed_ips={node.tunnel}/32")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "n1")
        with ConnectedNode(fleet, "n1", hello()) as connected:
            snapshot = connected.messages[1][1]
        [spec] = snapshot.users
        [peer] = spec.wireguard
        # What the agent applies on the node for this user (done here with wg(8)).
        psk = tmp_path / "psk"
        psk.write_text(peer.preshared_key + "\n")
        in_ns(node.ns, "wg", "set", node.iface, "peer", peer.public_key, "preshared-key",
              str(psk), "allowed-ips", ",".join(peer.allowed_ips))  # fmt: skip
        [address] = peer.allowed_ips
        ip_batch(node.ns, f"route add {address} dev {node.iface}")

        config = fleet.json("users", "links", "alice", "--node", "n1", role="operator")
        [link] = config["links"]
        conf = link["wireguard_conf"]
        assert f"Address = {address}" in conf
        conf_file = tmp_path / "alice.conf"
        conf_file.write_text(links.strip_wg_quick(conf))
        in_ns(client.ns, "wg", "setconf", client.iface, str(conf_file))
        ip_batch(client.ns, f"addr add {address} dev {client.iface}")

        source = address.split("/")[0]
        ping = subprocess.run(
            ["ip", "netns", "exec", client.ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2",
             "-W", "1", "-w", "8", "-I", source, node.tunnel],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        seen = wg_pair.wg_dump_peers(node)[peer.public_key]
        assert seen["preshared"] and seen["rx_bytes"] > 0 and seen["last_handshake"] > 0
