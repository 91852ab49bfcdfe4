"""The fleet's own machinery on real parts: namespaces, bridge, cores, wireguard-go,
central, pid files; up and down both idempotent, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edgeward.devfleet import netns, vless
from edgeward.devfleet.corestats import read_core
from edgeward.devfleet.layout import BLOB_PORT
from edgeward.devfleet.nodes import UAPI_DIR, core_name
from edgeward.devfleet.procs import Processes
from tests.support.rawcore import raw_add_vless


def test_up_is_idempotent_and_down_leaves_nothing(fleet):
    layout = fleet.layout
    fleet.up(agents=False)
    first = {name: fleet.procs.get(name) for name in fleet.procs.names()}
    assert {"central", "blob", "core-node-1", "core-node-2"} <= set(first)
    fleet.up(agents=False)  # a second up keeps what runs
    assert {name: fleet.procs.get(name) for name in fleet.procs.names()} == first
    for node in layout.nodes:
        assert read_core(node.ns).users == {}
        assert (UAPI_DIR / f"{node.wg_iface}.sock").exists()

    pids = [handle.pid for handle in first.values()]
    assert fleet.down() == []
    assert netns.leftovers(layout) == []
    assert not any(fleet.procs.alive(name) for name in first)
    assert not any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in pids)
    assert not any((UAPI_DIR / f"{i}.sock").exists() for i in layout.wg_ifaces())
    assert fleet.down() == []  # twice: nothing to do, no error


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_user_on_a_node_core_is_served_across_the_bridge_and_counted(fleet):
    """The path every later test relies on: host client -> node namespace core ->
    blob server on the bridge; the core's own counters see exactly the bytes."""
    fleet.up(agents=False)
    layout = fleet.layout
    node = layout.nodes[0]
    user = str(uuid.uuid4())
    netns.call_in_netns(node.ns, lambda: raw_add_vless(10085, "vless-in", "u1", user))
    target = (layout.blob_address, BLOB_PORT)
    with pytest.raises(vless.NotServed):
        vless.fetch(node.inbound("vless-in"), str(uuid.uuid4()), target, "/blob/10")
    received = vless.fetch(node.inbound("vless-in"), user, target, "/blob/300000")
    assert received > 300_000  # body plus HTTP headers
    up, down = read_core(node.ns).users["u1"]
    assert down == received
    assert up == len(vless.http_get(*target, "/blob/300000"))
    # node-2's core never saw the user
    assert read_core(layout.nodes[1].ns).users == {}


def test_restarted_core_has_a_new_process_and_forgot_its_users(fleet):
    fleet.up(agents=False)
    node = fleet.layout.nodes[0]
    user = str(uuid.uuid4())
    netns.call_in_netns(node.ns, lambda: raw_add_vless(10085, "vless-in", "u1", user))
    old = fleet.procs.get(core_name(node))
    fleet.restart_core(node)
    assert fleet.procs.get(core_name(node)) != old
    target = (fleet.layout.blob_address, BLOB_PORT)
    with pytest.raises(vless.NotServed):
        vless.fetch(node.inbound("vless-in"), user, target, "/blob/10")


def test_a_recycled_pid_is_never_signalled(tmp_path):
    procs = Processes(tmp_path / "run")
    handle = procs.start("sleeper", ["sleep", "30"])
    try:
        # The pid file now names the same PID with another start time: a different process.
        (tmp_path / "run" / "sleeper.pid").write_text(f"{handle.pid} {handle.started + 1}\n")
        procs.stop("sleeper")
        assert Path(f"/proc/{handle.pid}").exists() and _not_zombie(handle.pid)
    finally:
        (tmp_path / "run" / "sleeper.pid").write_text(f"{handle.pid} {handle.started}\n")
        procs.kill("sleeper")
    assert not _not_zombie(handle.pid)


def test_cut_central_drops_only_central(fleet):
    fleet.up(agents=False)
    layout = fleet.layout
    node = layout.nodes[0]

    def reaches(port: int, address: str) -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", node.ns, "curl", "-s", "-o", "/dev/null", "--max-time", "2",
             f"http://{address}:{port}/blob/1"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        return proc.returncode != 28 and proc.returncode != 7  # 28 timeout, 7 refused/unreach

    assert reaches(7443, layout.central_address)
    netns.cut_central(layout, node)
    assert not reaches(7443, layout.central_address)
    assert reaches(BLOB_PORT, layout.blob_address)
    netns.restore_central(layout, node)
    assert reaches(7443, layout.central_address)


def test_a_subnet_already_used_on_the_host_is_refused_and_nothing_is_made(fleet):
    layout = fleet.layout
    link = f"{layout.name}x0"
    netns.run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{layout.name}x1")
    try:
        netns.run("ip", "addr", "add", f"{layout.prefix}.200/24", "dev", link)
        netns.run("ip", "link", "set", link, "up")
        with pytest.raises(netns.NetError, match=rf"{layout.prefix}.0/24 is already used"):
            fleet.up(agents=False)
        assert netns.leftovers(layout) == []
        assert fleet.procs.names() == []
    finally:
        netns.run("ip", "link", "del", link, check=False)


def test_bad_fleet_options_are_refused_with_the_reason(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgeward.devfleet", "--dir", str(tmp_path / "f"),
         "--subnet", "66", "up"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "subnet 66 must be 16..254 and not 66 (the WireGuard pool)" in proc.stderr
    assert not (tmp_path / "f").exists()
