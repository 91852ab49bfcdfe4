"""Checks of admin input about where and how clients connect (pure)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from edgeward.proto import v1

from .admin_records import LINK_PARAMS, NodeInbound
from .errors import InvalidInput

HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
NETWORKS = ("tcp", "ws", "grpc", "httpupgrade")
SECURITIES = ("none", "tls", "reality")


def check_public_address(node_id: str, address: str) -> None:
    """'' (not client-facing yet), an IP address or a host name."""
    if not address:
        return
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if not HOSTNAME.match(address):
        raise InvalidInput(
            f"node {node_id!r}: public address {address!r} is neither an IP address nor a host name"
        )


def check_wireguard_key(what: str, key: str) -> None:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidInput(f"{what}: {key!r} is not a WireGuard key (32 bytes, base64)")


def check_client_side(node_id: str, item: NodeInbound) -> None:
    tag = item.inbound.tag
    where = f"node {node_id!r} inbound {tag!r}"
    if isinstance(item.port, bool) or not isinstance(item.port, int):
        raise InvalidInput(f"{where}: port must be a number, got {item.port!r}")
    if not 0 <= item.port <= 65535:
        raise InvalidInput(f"{where}: port {item.port} is outside 1-65535")
    unknown = sorted(set(item.params) - set(LINK_PARAMS))
    if unknown:
        raise InvalidInput(
            f"{where}: unknown link parameter(s) {', '.join(unknown)}"
            f" (known: {', '.join(LINK_PARAMS)})"
        )
    network = item.params.get("network", "tcp")
    if network not in NETWORKS:
        raise InvalidInput(f"{where}: network {network!r} is not one of {', '.join(NETWORKS)}")
    security = item.params.get("security", "none")
    if security not in SECURITIES:
        raise InvalidInput(f"{where}: security {security!r} is not one of {', '.join(SECURITIES)}")
    if security == "reality" and not item.params.get("public_key"):
        raise InvalidInput(f"{where}: REALITY needs the server's public_key")
    if item.inbound.engine == v1.Engine.WIREGUARD and item.port:
        key = item.params.get("public_key", "")
        if not key:
            raise InvalidInput(f"{where}: a client-facing WireGuard interface needs its public_key")
        check_wireguard_key(f"{where} public_key", key)
        for cidr in filter(None, item.params.get("allowed_ips", "").split(",")):
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise InvalidInput(f"{where}: allowed_ips entry {cidr!r} is not a CIDR") from None
