"""The fleet's network: a bridge on the host, one namespace per node, veths.

Every command is bounded in time. Creation is idempotent (what exists is
kept), removal is forgiving (what is missing is skipped), so `up` after a
crash and `down` twice both work. Only the fleet's own names are touched.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .layout import FleetLayout, NodeLayout

CMD_TIMEOUT = 15.0
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def run(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        args, input=input, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ip_batch(ns: str | None, *commands: str, check: bool = True) -> None:
    where = ("-n", ns) if ns else ()
    flags = () if check else ("-force",)
    run("ip", *where, *flags, "-batch", "-", input="\n".join(commands) + "\n", check=check)


def namespaces() -> set[str]:
    out = run("ip", "netns", "list", check=False)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str, ns: str | None = None) -> bool:
    where = ("-n", ns) if ns else ()
    proc = subprocess.run(
        ["ip", *where, "link", "show", name], capture_output=True, timeout=CMD_TIMEOUT
    )
    return proc.returncode == 0


def _attach(layout: FleetLayout, ns: str, veth_host: str, veth_ns: str, address: str) -> None:
    if ns not in namespaces():
        run("ip", "netns", "add", ns)
    if not link_exists(veth_host):
        ip_batch(
            None,
            f"link add {veth_host} type veth peer name {veth_ns} netns {ns}",
            f"link set {veth_host} master {layout.bridge}",
            f"link set {veth_host} up",
        )
        ip_batch(ns, "link set lo up", f"addr add {address}/24 dev {veth_ns}",
                 f"link set {veth_ns} up")  # fmt: skip


def subnet_in_use(layout: FleetLayout) -> str | None:
    """A host route into the fleet's /24 that is not the fleet's own bridge, if any:
    the fleet would shadow (or be shadowed by) a real network."""
    fleet_net = ipaddress.ip_network(f"{layout.prefix}.0/24")
    for line in run("ip", "-4", "route", "show", "table", "all", check=False).splitlines():
        words = line.split()
        if not words or "dev" not in words or words[words.index("dev") + 1] == layout.bridge:
            continue
        dest = words[1] if words[0] in ("local", "broadcast", "unicast") else words[0]
        try:
            net = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            continue  # "default" and other non-prefix words
        if net.overlaps(fleet_net):
            return line.strip()
    return None


def build(layout: FleetLayout) -> None:
    """Bridge with central's and the blob server's addresses; a namespace per node and
    one for WireGuard clients, each joined to the bridge by a veth."""
    conflict = subnet_in_use(layout)
    if conflict:
        raise NetError(
            f"{layout.prefix}.0/24 is already used on this machine ({conflict});"
            " pick another with --subnet"
        )
    if not link_exists(layout.bridge):
        ip_batch(
            None,
            f"link add {layout.bridge} type bridge",
            f"addr add {layout.central_address}/24 dev {layout.bridge}",
            f"addr add {layout.blob_address}/32 dev {layout.bridge}",
            f"link set {layout.bridge} up",
        )
    for node in layout.nodes:
        _attach(layout, node.ns, node.veth_host, node.veth_ns, node.address)
    _attach(
        layout, layout.client_ns, layout.client_veth_host, layout.client_veth_ns,
        layout.client_address,
    )  # fmt: skip


def teardown(layout: FleetLayout) -> None:
    """Remove namespaces (their veth ends go with them) and the bridge."""
    existing = namespaces()
    for ns in layout.namespaces():
        if ns in existing:
            run("ip", "netns", "del", ns, check=False)
    for veth in [n.veth_host for n in layout.nodes] + [layout.client_veth_host]:
        if link_exists(veth):
            run("ip", "link", "del", veth, check=False)
    if link_exists(layout.bridge):
        run("ip", "link", "del", layout.bridge, check=False)


def leftovers(layout: FleetLayout) -> list[str]:
    """What of the fleet's network still exists (empty after teardown)."""
    found = [ns for ns in layout.namespaces() if ns in namespaces()]
    links = [layout.bridge] + [n.veth_host for n in layout.nodes] + [layout.client_veth_host]
    found += [link for link in links if link_exists(link)]
    return found


# ------------------------------------------------------------------ faults


def cut_central(layout: FleetLayout, node: NodeLayout) -> None:
    """Silently drop the node's packets to central (a blackhole route in its namespace):
    the stream stalls as it does behind a dead link, traffic to users keeps flowing."""
    ip_batch(node.ns, f"route replace blackhole {layout.central_address}/32")


def restore_central(layout: FleetLayout, node: NodeLayout) -> None:
    ip_batch(node.ns, f"route del blackhole {layout.central_address}/32", check=False)


def link_down(node: NodeLayout) -> None:
    """The node's cable pulled: the host end of its veth goes down (no carrier inside)."""
    run("ip", "link", "set", node.veth_host, "down")


def link_up(node: NodeLayout) -> None:
    run("ip", "link", "set", node.veth_host, "up")


# ------------------------------------------------------------------ run code inside


_libc = ctypes.CDLL(None, use_errno=True)


def call_in_netns(ns: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run fn in a fresh thread that entered namespace `ns` (sockets it opens live there).

    A thread's network namespace is its own (setns affects only the calling thread), so
    the caller's process stays where it was.
    """
    result: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(Path("/run/netns") / ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in namespace {ns} took more than {timeout}s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
