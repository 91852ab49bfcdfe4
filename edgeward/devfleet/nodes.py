"""Bringing up one node's parts inside its namespace: the v2ray core, the
wireguard-go interface and the agent (enrolled with a pki token)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .corestats import core_answers
from .layout import WG_PORT, FleetLayout, NodeLayout, agent_toml, core_config, dump_json
from .netns import ip_batch, run
from .procs import Processes

UAPI_DIR = Path("/var/run/wireguard")
START_WAIT = 20.0


def core_name(node: NodeLayout) -> str:
    return f"core-{node.node_id}"


def wg_name(iface: str) -> str:
    return f"wireguard-{iface}"


def agent_name(node: NodeLayout) -> str:
    return f"agent-{node.node_id}"


def wait_for(what: str, ready, timeout: float = START_WAIT, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s{': ' + log if log else ''}")
        time.sleep(0.05)


# ------------------------------------------------------------------ core


def start_core(procs: Processes, node: NodeLayout) -> None:
    """The node's v2ray core (DESIGN §2 config); waits until its API answers."""
    node.dir.mkdir(parents=True, exist_ok=True)
    node.core_config.write_text(dump_json(core_config(node)))
    name = core_name(node)
    if not procs.alive(name):
        procs.start(name, ["v2ray", "-config", str(node.core_config)], netns=node.ns)

    def ready() -> bool:
        if not procs.alive(name):
            raise RuntimeError(f"v2ray of {node.node_id} exited: {procs.tail(name)}")
        return core_answers(node.ns)

    wait_for(f"v2ray of {node.node_id}", ready)


def restart_core(procs: Processes, node: NodeLayout) -> None:
    """SIGKILL and start again: the core forgets its users and zeroes its counters."""
    procs.kill(core_name(node))
    start_core(procs, node)


# ------------------------------------------------------------------ wireguard


def start_wireguard(
    procs: Processes, ns: str, iface: str, private_key_file: Path, address: str,
    listen_port: int | None,
) -> None:  # fmt: skip
    """A wireguard-go interface in ns with its key, port and address, link up."""
    name = wg_name(iface)
    sock = UAPI_DIR / f"{iface}.sock"
    if not procs.alive(name):
        sock.unlink(missing_ok=True)
        argv = ["env", "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error", "wireguard-go", "-f", iface]
        procs.start(name, argv, netns=ns)

    def ready() -> bool:
        if not procs.alive(name):
            raise RuntimeError(f"wireguard-go {iface} exited: {procs.tail(name)}")
        return sock.exists()

    wait_for(f"wireguard-go {iface}", ready)
    args = ["wg", "set", iface, "private-key", str(private_key_file)]
    if listen_port is not None:
        args += ["listen-port", str(listen_port)]
    run("ip", "netns", "exec", ns, *args)
    ip_batch(ns, f"addr replace {address} dev {iface}", f"link set {iface} up")


def stop_wireguard(procs: Processes, iface: str) -> None:
    procs.stop(wg_name(iface))
    (UAPI_DIR / f"{iface}.sock").unlink(missing_ok=True)


def ensure_wg_key(path: Path) -> str:
    """The interface's private key file (made once); returns the public key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = run("wg", "genkey").strip()
        path.touch(mode=0o600)
        path.write_text(key + "\n")
    return run("wg", "pubkey", input=path.read_text()).strip()


def start_node_wireguard(procs: Processes, node: NodeLayout) -> str:
    ensure_wg_key(node.wg_key)
    start_wireguard(procs, node.ns, node.wg_iface, node.wg_key, f"{node.wg_address}/16", WG_PORT)
    return ensure_wg_key(node.wg_key)


# ------------------------------------------------------------------ agent


def agent_program() -> list[str]:
    from .tools import tool

    return [tool("edgeward-agent")]


def agent_commands() -> set[str]:
    """The subcommands the installed edgeward-agent offers (run, enroll, status...)."""
    proc = subprocess.run(
        [*agent_program(), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    commands, listing = set(), False
    for line in proc.stdout.splitlines():
        if line.strip() == "Commands:":
            listing = True
        elif listing and line.startswith("  ") and line.strip():
            commands.add(line.split()[0])
    return commands


def write_agent_config(layout: FleetLayout, node: NodeLayout, sample_interval: float) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    node.state_dir.mkdir(parents=True, exist_ok=True)
    node.agent_config.write_text(agent_toml(layout, node, sample_interval))


def enroll_agent(layout: FleetLayout, node: NodeLayout, token: str) -> None:
    """The agent's own enrollment: key + CSR on the node, certificate from central."""
    if node.cert.exists():
        return
    from .enroll import agent_can_enroll, enroll_with_token

    if not agent_can_enroll():
        enroll_with_token(layout, node, token)
        return
    proc = subprocess.run(
        ["ip", "netns", "exec", node.ns, *agent_program(), "enroll",
         "--config", str(node.agent_config), "--node-id", node.node_id,
         "--ca-file", str(layout.pki_dir / "ca.crt"),
         "--central", layout.central_endpoint, "--token", token],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not node.cert.exists():
        raise RuntimeError(
            f"enrollment of {node.node_id} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )


def start_agent(procs: Processes, node: NodeLayout) -> None:
    name = agent_name(node)
    if not procs.alive(name):
        procs.start(name, [*agent_program(), "run", "--config", str(node.agent_config)],
                    netns=node.ns)  # fmt: skip


def agent_status(node: NodeLayout) -> dict | None:
    """`edgeward-agent status --json` of the node's running agent, None if it does not
    answer (dead, starting)."""
    import json

    proc = subprocess.run(
        [*agent_program(), "status", "--json", "--config", str(node.agent_config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return None
