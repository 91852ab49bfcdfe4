"""Real clients of the fleet's users: a v2ray client process (socks5 -> VLESS) on
the host with curl through it, and a wireguard-go client interface per node in
the clients namespace with the user's own keys."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from .admin import UserSecrets
from .layout import WG_PORT, FleetLayout, NodeLayout, dump_json, vless_client_config
from .netns import ip_batch, run
from .nodes import start_wireguard, wait_for
from .procs import Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_v2ray_client(
    procs: Processes, layout: FleetLayout, node: NodeLayout, user: UserSecrets
) -> int:
    """A v2ray client for user on node; returns its socks5 port on 127.0.0.1."""
    name = f"client-{user.user_id}-{node.node_id}"
    config = layout.run_dir / f"{name}.json"
    if procs.alive(name):
        port = int(config.read_text().split('"port": ')[1].split(",")[0])
        return port
    port = free_port()
    config.write_text(dump_json(vless_client_config(port, node, user.uuid)))
    procs.start(name, ["v2ray", "-config", str(config)])

    def ready() -> bool:
        if not procs.alive(name):
            raise RuntimeError(f"v2ray client {name} exited: {procs.tail(name)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(name, ready)
    return port


def curl_through(socks_port: int, url: str, timeout: float = 20.0) -> int:
    """Download url through the socks5 proxy with curl; bytes received (raises on failure)."""
    proc = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", str(timeout),
         "--socks5-hostname", f"127.0.0.1:{socks_port}", "--output", "/dev/null",
         "--write-out", "%{size_download}", url],
        capture_output=True, text=True, timeout=timeout + 5, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ConnectionError(f"curl exit {proc.returncode}: {proc.stderr.strip()}")
    return int(proc.stdout.strip() or 0)


def start_wg_client(
    procs: Processes, layout: FleetLayout, node: NodeLayout, user: UserSecrets, node_public: str
) -> str:
    """A wireguard-go interface in the clients namespace speaking to node as user.
    Returns the interface name; the node's tunnel address is reachable through it."""
    iface = layout.client_wg_iface(node)
    key_file = layout.run_dir / f"{iface}-{user.user_id}.key"
    key_file.touch(mode=0o600)
    key_file.write_text(user.wg_private_key + "\n")
    psk_file = layout.run_dir / f"{iface}-{user.user_id}.psk"
    psk_file.touch(mode=0o600)
    psk_file.write_text(user.wg_preshared_key + "\n")
    start_wireguard(procs, layout.client_ns, iface, key_file, user.wg_address, None)
    run("ip", "netns", "exec", layout.client_ns, "wg", "set", iface, "peer", node_public,
        "preshared-key", str(psk_file), "endpoint", f"{node.address}:{WG_PORT}",
        "allowed-ips", f"{node.wg_address}/32")  # fmt: skip
    ip_batch(layout.client_ns, f"route replace {node.wg_address}/32 dev {iface}")
    return iface


def wg_ping(layout: FleetLayout, node: NodeLayout, count: int = 10, size: int = 1200) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", layout.client_ns, "ping", "-n", "-q", "-c", str(count),
         "-i", "0.2", "-s", str(size), "-W", "1", "-w", str(count + 5), node.wg_address],
        capture_output=True, text=True, timeout=count + 20, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def wg_peer_bytes(ns: str, iface: str) -> dict[str, tuple[int, int]]:
    """`wg show IFACE transfer` inside ns: public key -> (rx, tx)."""
    out = run("ip", "netns", "exec", ns, "wg", "show", iface, "transfer", check=False)
    result = {}
    for line in out.splitlines():
        key, rx, tx = line.split("\t")
        result[key] = (int(rx), int(tx))
    return result


def node_public_key(node: NodeLayout) -> str:
    return run("wg", "pubkey", input=Path(node.wg_key).read_text()).strip()
