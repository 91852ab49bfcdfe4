"""Where everything of a local fleet lives: names, addresses, ports, config files.

Pure: a FleetLayout is computed from (fleet dir, name, subnet, node count) and
every driver reads its names from here, so `down` finds exactly what `up`
made. Only private addresses are used: the fleet's bridge and veths carry
10.<subnet>.0.0/24 (central .1, the blob server .2, node n at .10+n, the
WireGuard client namespace .9), WireGuard tunnels use central's pool
(10.66.0.0/16); every proxy listener of a node is inside its own namespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

FLEET_NAME = re.compile(r"^[a-z][a-z0-9]{0,3}$")  # short: Linux interface names have 15 chars
CENTRAL_PORT = 7443
BLOB_PORT = 8080
CORE_API_PORT = 10085
INBOUND_PORTS = {"vless-in": 20001, "vmess-in": 20002, "trojan-in": 20003}
WG_PORT = 51820
WG_POOL = "10.66.0.0/16"


@dataclass(frozen=True)
class NodeLayout:
    index: int  # 1-based
    node_id: str  # e.g. "node-1"
    ns: str  # network namespace
    veth_host: str  # host end, enslaved to the fleet bridge
    veth_ns: str  # node end
    address: str  # the node's address on the fleet bridge
    wg_iface: str  # wireguard-go interface (names are global: UAPI sockets)
    wg_address: str  # the node's own tunnel address (outside the user range)
    dir: Path  # state of this node: configs, logs, journal, certificate

    @property
    def core_config(self) -> Path:
        return self.dir / "core.json"

    @property
    def agent_config(self) -> Path:
        return self.dir / "agent.toml"

    @property
    def pki_dir(self) -> Path:
        """Where enrollment puts the CA, certificate and key (in the agent's state)."""
        return self.state_dir / "pki"

    @property
    def cert(self) -> Path:
        return self.pki_dir / "node.crt"

    @property
    def key(self) -> Path:
        return self.pki_dir / "node.key"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def wg_key(self) -> Path:
        return self.dir / "wg.key"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def control_socket(self) -> Path:
        return self.dir / "control.sock"

    def inbound(self, tag: str) -> tuple[str, int]:
        return self.address, INBOUND_PORTS[tag]


@dataclass(frozen=True)
class FleetLayout:
    dir: Path
    name: str = "ewf"
    subnet: int = 77  # the fleet network is 10.<subnet>.0.0/24
    nodes: tuple[NodeLayout, ...] = field(default=())

    @property
    def prefix(self) -> str:
        return f"10.{self.subnet}.0"

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def central_address(self) -> str:
        return f"{self.prefix}.1"

    @property
    def central_endpoint(self) -> str:
        return f"{self.central_address}:{CENTRAL_PORT}"

    @property
    def blob_address(self) -> str:
        return f"{self.prefix}.2"

    @property
    def blob_url_base(self) -> str:
        return f"http://{self.blob_address}:{BLOB_PORT}/blob"

    @property
    def client_ns(self) -> str:
        """WireGuard clients live here: a real remote peer of every node."""
        return f"{self.name}-clients"

    @property
    def client_veth_host(self) -> str:
        return f"{self.name}hc"

    @property
    def client_veth_ns(self) -> str:
        return f"{self.name}nc"

    @property
    def client_address(self) -> str:
        return f"{self.prefix}.9"

    def client_wg_iface(self, node: NodeLayout) -> str:
        return f"{self.name}cwg{node.index}"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def central_dir(self) -> Path:
        return self.dir / "central"

    @property
    def central_config(self) -> Path:
        return self.central_dir / "central.toml"

    @property
    def central_db(self) -> Path:
        return self.central_dir / "central.sqlite"

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of every process the fleet started."""
        return self.dir / "run"

    @property
    def state_file(self) -> Path:
        return self.dir / "fleet.json"

    def node(self, node_id: str) -> NodeLayout:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this fleet")

    def namespaces(self) -> list[str]:
        return [node.ns for node in self.nodes] + [self.client_ns]

    def wg_ifaces(self) -> list[str]:
        return [n.wg_iface for n in self.nodes] + [self.client_wg_iface(n) for n in self.nodes]


def make_layout(directory: Path, *, name: str = "ewf", subnet: int = 77, nodes: int = 2):
    """The layout of a fleet with `nodes` nodes; name and subnet keep two fleets apart."""
    if not FLEET_NAME.match(name):
        raise ValueError(f"fleet name {name!r} must match {FLEET_NAME.pattern}")
    if not 16 <= subnet <= 254 or subnet == 66:
        raise ValueError(f"subnet {subnet} must be 16..254 and not 66 (the WireGuard pool)")
    if not 1 <= nodes <= 9:
        raise ValueError(f"a local fleet has 1..9 nodes, not {nodes}")
    directory = Path(directory).absolute()
    node_layouts = tuple(
        NodeLayout(
            index=i,
            node_id=f"node-{i}",
            ns=f"{name}-node-{i}",
            veth_host=f"{name}h{i}",
            veth_ns=f"{name}n{i}",
            address=f"10.{subnet}.0.{10 + i}",
            wg_iface=f"{name}wg{i}",
            wg_address=f"10.66.255.{i}",
            dir=directory / "nodes" / f"node-{i}",
        )
        for i in range(1, nodes + 1)
    )
    return FleetLayout(directory, name, subnet, node_layouts)


# ------------------------------------------------------------------ config files


def central_toml(layout: FleetLayout, enforce_interval: float = 1.0) -> str:
    return (
        f'[server]\nlisten = "{layout.central_endpoint}"\n'
        f'[storage]\ndatabase = "{layout.central_db}"\nwireguard_pool = "{WG_POOL}"\n'
        f'[pki]\nca_dir = "{layout.pki_dir}"\n'
        f'cert = "{layout.central_dir / "server.crt"}"\n'
        f'key = "{layout.central_dir / "server.key"}"\n'
        f"[enforcement]\ninterval_seconds = {enforce_interval}\n"
    )


def agent_toml(layout: FleetLayout, node: NodeLayout, sample_interval: float = 1.0) -> str:
    """The node's agent configuration (keys of edgeward.agent.config.AgentConfig)."""
    return (
        f'node_id = "{node.node_id}"\n'
        f'state_dir = "{node.state_dir}"\n'
        f'control_socket = "{node.control_socket}"\n'
        f"sample_interval = {sample_interval}\n"
        'log_level = "info"\n'
        "[central]\n"
        f'address = "{layout.central_endpoint}"\n'
        f'ca_file = "{node.ca_file}"\n'
        f'cert_file = "{node.cert}"\n'
        f'key_file = "{node.key}"\n'
        "reconnect_min = 0.5\nreconnect_max = 3.0\n"
        "[core]\n"
        f'api = "127.0.0.1:{CORE_API_PORT}"\n'
        'flavor = "v2fly"\n'
        "poll_interval = 1.0\n"
        "[wireguard]\n"
        f'interfaces = ["{node.wg_iface}"]\n'
    )


def core_config(node: NodeLayout) -> dict:
    """A node's core: API on the namespace's loopback, inbounds on the node's fleet address."""
    return v2ray_server_config(node.address, CORE_API_PORT, INBOUND_PORTS)


def v2ray_server_config(listen: str, api_port: int, ports: Mapping[str, int]) -> dict:
    """DESIGN §2's server config: the API (HandlerService + StatsService) on
    127.0.0.1:api_port, empty VLESS/VMess/Trojan inbounds on listen:ports[tag],
    per-user stats on. The tests' v2ray fixture uses it too."""
    proxy = [
        ("vless-in", "vless", {"clients": [], "decryption": "none"}),
        ("vmess-in", "vmess", {"clients": []}),
        ("trojan-in", "trojan", {"clients": []}),
    ]
    inbounds: list[dict] = [
        {
            "tag": "api",
            "listen": "127.0.0.1",
            "port": api_port,
            "protocol": "dokodemo-door",
            "settings": {"address": "127.0.0.1"},
        }
    ]
    for tag, protocol, settings in proxy:
        inbound = {
            "tag": tag,
            "listen": listen,
            "port": ports[tag],
            "protocol": protocol,
            "settings": settings,
        }
        if protocol == "vless":
            inbound["streamSettings"] = {"network": "tcp", "security": "none"}
        inbounds.append(inbound)
    return {
        "log": {"loglevel": "warning"},
        "api": {"tag": "api", "services": ["HandlerService", "StatsService"]},
        "stats": {},
        "policy": {
            "levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}},
            "system": {"statsInboundUplink": True, "statsInboundDownlink": True},
        },
        "inbounds": inbounds,
        "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}],
        "routing": {"rules": [{"type": "field", "inboundTag": ["api"], "outboundTag": "api"}]},
    }


def vless_client_config(socks_port: int, node: NodeLayout, uuid: str) -> dict:
    """A real v2ray client: socks5 on the host's loopback -> VLESS to the node."""
    address, port = node.inbound("vless-in")
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [
            {
                "tag": "socks",
                "listen": "127.0.0.1",
                "port": socks_port,
                "protocol": "socks",
                "settings": {"udp": False},
            }
        ],
        "outbounds": [
            {
                "tag": "proxy",
                "protocol": "vless",
                "settings": {
                    "vnext": [
                        {
                            "address": address,
                            "port": port,
                            "users": [{"id": uuid, "encryption": "none"}],
                        }
                    ]
                },
                "streamSettings": {"network": "tcp", "security": "none"},
            }
        ],
    }


def dump_json(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"
