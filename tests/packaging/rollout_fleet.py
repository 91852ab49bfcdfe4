"""A fleet for the rollout test: real central, chroot nodes running the packaged agent.

central runs in a thread of the test (tests/admin/fleet.py: real CA, real SQLite,
mTLS on a loopback port). Each node is a Debian chroot with the agent's .deb
installed; it is enrolled with the packaged `edgeward-agent enroll` and a
single-use token from the CA, and its agent runs as the service user through
tests/packaging/chroot_agent.py (the chroot shares this machine's network, so it
reaches central on 127.0.0.1). No proxy core runs: the node's core API points at
a closed port; the agent serves without it and still connects to central.
Health is read as an operator would: the `edgeward` CLI, `node health NODE --json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from edgeward.pki import authority
from tests.admin.fleet import Fleet
from tests.packaging import chroot_agent
from tests.packaging.system import Chroot

EDGEWARD = Path(sys.executable).with_name("edgeward")  # the admin CLI of this checkout
TRANSPORT = Path(chroot_agent.__file__)
# The shipped config (`edgeward-agent config-example`) with the core API on a port
# where nothing listens (never another test's core).
CONFIG_EDITS = {'api = "127.0.0.1:10085"': 'api = "127.0.0.1:1"'}
WAIT = 30.0


def edgeward_cli(fleet: Fleet, role: str = "viewer") -> list[str]:
    pair = fleet.admins[role]
    return [str(EDGEWARD), "--central", f"127.0.0.1:{fleet.port}", "--cert", str(pair.cert),
            "--key", str(pair.key), "--ca", str(fleet.pki.ca_file)]  # fmt: skip


def health_command(fleet: Fleet) -> str:
    """The rollout's --health: central's view of {node}, from the real admin CLI."""
    return " ".join([*edgeward_cli(fleet), "node", "health", "{node}", "--json"])


def transport_command(nodes_dir: Path) -> str:
    """The rollout's --transport: run in the node's chroot, then restart its agent."""
    return f"{sys.executable} {TRANSPORT} {nodes_dir}/{{node}}"


def health(fleet: Fleet, node_id: str) -> dict:
    done = subprocess.run(
        [*edgeward_cli(fleet), "node", "health", node_id, "--json"],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def wait_health(fleet: Fleet, node_id: str, connected: bool, version: str) -> dict:
    """Poll central's view of the node until it matches (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        report = health(fleet, node_id)
        if report["connected"] == connected and (report["version"] == version or not connected):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"{node_id}: central still reports {report} after {WAIT}s")
        time.sleep(0.3)


@dataclass
class ChrootNode:
    node_id: str
    chroot: Chroot
    started: list[int] = field(default_factory=list)  # agents this process spawned

    @property
    def root(self) -> Path:
        return self.chroot.root

    def install_and_enroll(self, fleet: Fleet, deb: Path) -> None:
        self.chroot.run("dpkg", "-i", self.chroot.copy_in(deb))
        config = self.chroot.path("/etc/edgeward/agent.toml")
        text = config.read_text()
        for old, new in CONFIG_EDITS.items():
            assert text.count(old) == 1, f"the shipped agent.toml has no single {old!r}"
            text = text.replace(old, new)
        config.write_text(text)
        fleet.ok("nodes", "add", self.node_id, "--address", "127.0.0.1",
                 "--inbound", "tag=vless-in,protocol=vless,port=443")  # fmt: skip
        token = authority.mint_enrollment_token(fleet.pki.store, self.node_id, datetime.now(UTC))
        ca = self.chroot.copy_in(fleet.pki.ca_file)
        self.chroot.run("edgeward-agent", "enroll", "--central", f"127.0.0.1:{fleet.port}",
                        "--token", token, "--node-id", self.node_id, "--ca-file", ca)  # fmt: skip

    def start(self) -> int:
        self.started.append(chroot_agent.start(self.root))
        return self.started[-1]

    def stop(self) -> None:
        chroot_agent.stop(self.root)
        for pid in self.started:  # stopped since by a transport: reap, as their parent
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    @property
    def agent_pid(self) -> int | None:
        return chroot_agent.running_pid(self.root)

    @property
    def agent_uid(self) -> int | None:
        pid = self.agent_pid
        if pid is None:
            return None
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])

    @property
    def log(self) -> str:
        path = chroot_agent.log_file(self.root)
        return path.read_text(errors="replace") if path.exists() else ""

    def package_version(self) -> str:
        return self.chroot.run("dpkg-query", "-W", "-f=${Version}", "edgeward-agent").stdout
