"""The local fleet: up, down, status, and the handles tests use to break it.

`Fleet(layout).up()` builds the network, starts central, one v2ray core, one
wireguard-go interface and one agent per node namespace (enrolled through a
pki token), a blob server to fetch from, and leaves them running. `down()`
stops every process it recorded and removes every namespace and interface;
both are idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import netns
from .admin import CliAdmin, StorageAdmin, admin_cli_available, admin_toml
from .layout import BLOB_PORT, CENTRAL_PORT, FleetLayout, NodeLayout, central_toml
from .nodes import (
    agent_commands,
    agent_name,
    core_name,
    enroll_agent,
    ensure_wg_key,
    restart_core,
    start_agent,
    start_core,
    start_node_wireguard,
    stop_wireguard,
    wait_for,
    write_agent_config,
)
from .procs import Processes
from .tools import python, tool

REQUIRED_BINARIES = ("ip", "v2ray", "wireguard-go", "wg", "curl")
Say = Callable[[str], None]


def missing_requirements() -> str | None:
    """Why a fleet cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, WireGuard interfaces)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run ./scripts/setup)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (wireguard-go needs it)"
    return None


def listening(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class Fleet:
    def __init__(
        self, layout: FleetLayout, *, sample_interval: float = 1.0, say: Say | None = None
    ) -> None:
        self.layout = layout
        self.procs = Processes(layout.run_dir)
        self._admin: CliAdmin | StorageAdmin | None = None
        self.sample_interval = sample_interval
        self.say: Say = say or (lambda _text: None)

    @property
    def admin(self) -> CliAdmin | StorageAdmin:
        """The operator's CLI when this edgeward has it; central's storage otherwise."""
        if self._admin is None:
            layout = self.layout
            self._admin = CliAdmin(layout) if admin_cli_available() else StorageAdmin(layout)
        return self._admin

    # ------------------------------------------------------------ up

    def up(self, *, agents: bool = True) -> None:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(f"cannot start a local fleet: {reason}")
        layout = self.layout
        for directory in (layout.dir, layout.central_dir, layout.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.say(f"network: bridge {layout.bridge} {layout.prefix}.0/24, "
                 f"namespaces {', '.join(layout.namespaces())}")  # fmt: skip
        netns.build(layout)
        self._pki()
        self.start_central()
        for node in layout.nodes:
            self.admin.add_node(node)  # before its agent connects: central refuses strangers
        self.start_blob_server()
        for node in layout.nodes:
            self.say(f"{node.node_id}: v2ray core and wireguard-go {node.wg_iface} in {node.ns}")
            start_core(self.procs, node)
            start_node_wireguard(self.procs, node)
        if agents:
            self.start_agents()
        self._write_state()

    def _edgeward(self, *args: str) -> str:
        proc = subprocess.run(
            [tool("edgeward"), *args], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"edgeward {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _pki(self) -> None:
        layout = self.layout
        ca = ("pki", "--ca-dir", str(layout.pki_dir))
        if not (layout.pki_dir / "ca.crt").exists():
            self.say(f"pki: new CA in {layout.pki_dir}")
            self._edgeward(*ca, "init", "--name", f"edgeward-fleet-{layout.name}")
        if not (layout.central_dir / "admin.crt").exists():
            self._edgeward(*ca, "issue-admin", "admin", "--role", "admin",
                           "--out-dir", str(layout.central_dir))  # fmt: skip
            (layout.dir / "admin.toml").write_text(admin_toml(layout))
        if not (layout.central_dir / "server.crt").exists():
            self._edgeward(*ca, "issue-server", "server", "--host", layout.central_address,
                           "--out-dir", str(layout.central_dir))  # fmt: skip
        layout.central_config.write_text(central_toml(layout))

    def start_central(self) -> None:
        layout = self.layout
        if not self.procs.alive("central"):
            self.say(f"central: listening on {layout.central_endpoint}")
            self.procs.start(
                "central", [tool("edgeward-central"), "run", "--config", str(layout.central_config)]
            )

        def ready() -> bool:
            if not self.procs.alive("central"):
                raise RuntimeError(f"central exited: {self.procs.tail('central')}")
            return listening(layout.central_address, CENTRAL_PORT)

        wait_for("central", ready)

    def stop_central(self) -> None:
        self.procs.stop("central")

    def kill_central(self) -> None:
        self.procs.kill("central")

    def start_blob_server(self) -> None:
        layout = self.layout
        if not self.procs.alive("blob"):
            self.procs.start("blob", [python(), "-m", "edgeward.devfleet.blob",
                                      layout.blob_address, str(BLOB_PORT)])  # fmt: skip
        wait_for("blob server", lambda: listening(layout.blob_address, BLOB_PORT))

    def start_agents(self) -> None:
        commands = agent_commands()
        if not {"run", "enroll"} <= commands:
            raise RuntimeError(
                "edgeward-agent has no run/enroll commands yet "
                f"(found: {', '.join(sorted(commands)) or 'none'})"
            )
        for node in self.layout.nodes:
            write_agent_config(self.layout, node, self.sample_interval)
            if not node.cert.exists():
                token = self._edgeward("pki", "--ca-dir", str(self.layout.pki_dir),
                                       "token", node.node_id).strip()  # fmt: skip
                self.say(f"{node.node_id}: enrolling with a single-use token")
                enroll_agent(self.layout, node, token)
            self.say(f"{node.node_id}: agent started")
            start_agent(self.procs, node)

    # ------------------------------------------------------------ faults and restarts

    def kill_agent(self, node: NodeLayout) -> None:
        self.procs.kill(agent_name(node))

    def start_agent(self, node: NodeLayout) -> None:
        start_agent(self.procs, node)

    def restart_core(self, node: NodeLayout) -> None:
        restart_core(self.procs, node)

    # ------------------------------------------------------------ down and status

    def down(self) -> list[str]:
        """Stop everything, remove the network; returns what was left over (empty)."""
        layout = self.layout
        names = self.procs.names()
        # Agents first (they talk to the others), central and the rest after.
        for name in sorted(names, key=lambda n: (not n.startswith("agent-"), n)):
            if name.startswith("wireguard-"):
                stop_wireguard(self.procs, name.removeprefix("wireguard-"))
            else:
                self.procs.stop(name)
        for iface in layout.wg_ifaces():
            (Path("/var/run/wireguard") / f"{iface}.sock").unlink(missing_ok=True)
        netns.teardown(layout)
        layout.state_file.unlink(missing_ok=True)
        return netns.leftovers(layout) + [n for n in names if self.procs.alive(n)]

    def status(self) -> dict:
        layout = self.layout
        processes = {name: self.procs.alive(name) for name in self.procs.names()}
        return {
            "dir": str(layout.dir),
            "central": layout.central_endpoint,
            "network": netns.leftovers(layout),
            "processes": processes,
            "nodes": {
                node.node_id: {
                    "namespace": node.ns,
                    "address": node.address,
                    "core": processes.get(core_name(node), False),
                    "agent": processes.get(agent_name(node), False),
                    "wireguard": node.wg_iface,
                }
                for node in layout.nodes
            },
        }

    def _write_state(self) -> None:
        layout = self.layout
        state = {
            "name": layout.name,
            "subnet": layout.subnet,
            "nodes": len(layout.nodes),
            "wg_public_keys": {n.node_id: ensure_wg_key(n.wg_key) for n in layout.nodes},
        }
        layout.state_file.write_text(json.dumps(state, indent=1) + "\n")
