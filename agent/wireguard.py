"""One WireGuard driver interface over two backends.

The agent sees WireGuard through `WireGuard`: `upsert_peer`, `remove_peer`,
`peers` and `instance`. The backend is chosen per call the way wg(8) does it:
a UAPI socket at /var/run/wireguard/IFNAME.sock means a userspace
implementation (wireguard-go), otherwise kernel WireGuard over netlink.

Keys are base64 everywhere in edgeward; only the UAPI wire speaks hex.
Everything that can be checked before touching the device is checked here
(`validate_peer`), so bad input fails with a clear error and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from dataclasses import dataclass
from typing import Protocol

UAPI_SOCKET_DIR = "/var/run/wireguard"
KEY_LEN = 32
MAX_KEEPALIVE = 65535


class WireGuardError(Exception):
    """Base of every error the WireGuard drivers raise."""


class UnknownInterfaceError(WireGuardError):
    def __init__(self, iface: str, detail: str) -> None:
        super().__init__(f"unknown WireGuard interface {iface!r}: {detail}")
        self.iface = iface


class PeerRejectedError(WireGuardError):
    """The device answered a request with an error number."""

    def __init__(self, iface: str, public_key: str | None, errno: int, detail: str = "") -> None:
        what = f"peer {public_key}" if public_key else "device"
        text = f"WireGuard interface {iface!r} rejected {what}: errno {errno}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)
        self.iface = iface
        self.public_key = public_key
        self.errno = errno


class InvalidPeerError(WireGuardError, ValueError):
    """The peer description is malformed; nothing was sent to the device."""


@dataclass(frozen=True)
class PeerConfig:
    """Desired state of one peer. Applying it makes the peer exactly this:
    allowed IPs are replaced, a missing preshared key clears any present one."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    preshared_key: str | None = None
    persistent_keepalive: int = 0
    endpoint: str | None = None  # "host:port" or "[v6]:port"


@dataclass(frozen=True)
class PeerState:
    """A peer as the device reports it."""

    public_key: str
    allowed_ips: tuple[str, ...]
    has_preshared_key: bool
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None  # seconds since the epoch; None = never


@dataclass(frozen=True)
class InterfaceInstance:
    """Identifies one incarnation of an interface. When it changes, the
    interface was recreated: every peer is gone and every counter restarted
    (a new epoch for the agent's counter baselines)."""

    backend: str  # "uapi" or "netlink"
    iface: str
    token: str


class Backend(Protocol):
    name: str

    async def upsert_peer(self, iface: str, peer: PeerConfig) -> None: ...
    async def upsert_peers(self, iface: str, peers: list[PeerConfig]) -> None: ...
    async def remove_peer(self, iface: str, public_key: str) -> None: ...
    async def peers(self, iface: str) -> list[PeerState]: ...
    async def instance(self, iface: str) -> InterfaceInstance: ...


# ---- pure helpers ---------------------------------------------------------


def decode_key(key: str, what: str = "key") -> bytes:
    """base64 WireGuard key -> 32 raw bytes, or InvalidPeerError."""
    if not isinstance(key, str):
        raise InvalidPeerError(f"{what} must be a base64 string, got {type(key).__name__}")
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error as exc:
        raise InvalidPeerError(f"{what} {key!r} is not valid base64: {exc}") from None
    if len(raw) != KEY_LEN:
        raise InvalidPeerError(f"{what} {key!r} decodes to {len(raw)} bytes, expected {KEY_LEN}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def normalize_cidr(text: str) -> str:
    """An allowed IP must be an explicit network in CIDR form with no host
    bits set: the device would silently mask them, and the read-back would
    never equal the desired state."""
    if not isinstance(text, str) or "/" not in text:
        raise InvalidPeerError(f"allowed IP {text!r} is not in CIDR form (address/prefix)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidPeerError(f"allowed IP {text!r} is not a valid network: {exc}") from None
    return str(net)


def validate_endpoint(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidPeerError(f"endpoint {text!r} must be host:port or [v6]:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidPeerError(f"endpoint {text!r} has an unclosed IPv6 bracket")
        addr = host[1:-1]
    else:
        addr = host
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidPeerError(f"endpoint {text!r} must be an IP address and port") from None
    return text


def validate_peer(peer: PeerConfig) -> PeerConfig:
    """Check every field; return the peer with normalised allowed IPs."""
    decode_key(peer.public_key, "public key")
    if peer.preshared_key is not None:
        decode_key(peer.preshared_key, f"preshared key of peer {peer.public_key}")
    if isinstance(peer.allowed_ips, str):
        raise InvalidPeerError("allowed_ips must be a sequence of CIDRs, not one string")
    allowed = tuple(normalize_cidr(ip) for ip in peer.allowed_ips)
    keepalive = peer.persistent_keepalive
    if not isinstance(keepalive, int) or not 0 <= keepalive <= MAX_KEEPALIVE:
        raise InvalidPeerError(f"persistent keepalive {keepalive!r} must be 0..{MAX_KEEPALIVE}")
    if peer.endpoint is not None:
        validate_endpoint(peer.endpoint)
    return PeerConfig(
        public_key=peer.public_key,
        allowed_ips=allowed,
        preshared_key=peer.preshared_key,
        persistent_keepalive=keepalive,
        endpoint=peer.endpoint,
    )


def validate_iface(iface: str) -> str:
    # Linux IFNAMSIZ is 16 including the NUL; '/' would escape the socket dir.
    if not iface or len(iface) > 15 or "/" in iface or iface in (".", "..") or "\0" in iface:
        raise WireGuardError(f"invalid interface name {iface!r}")
    return iface


def uapi_socket_path(iface: str, socket_dir: str = UAPI_SOCKET_DIR) -> str:
    return os.path.join(socket_dir, f"{validate_iface(iface)}.sock")


# ---- the driver -----------------------------------------------------------


class WireGuard:
    """The agent's WireGuard driver. Selects a backend per call, like wg(8):
    an interface that gains or loses its UAPI socket switches with it."""

    def __init__(
        self,
        socket_dir: str = UAPI_SOCKET_DIR,
        netns: str | None = None,
    ) -> None:
        from edgeward.agent.wg_netlink import NetlinkBackend
        from edgeward.agent.wg_uapi import UapiBackend

        self.socket_dir = socket_dir
        self.uapi: Backend = UapiBackend(socket_dir)
        self.netlink: Backend = NetlinkBackend(netns=netns)

    def backend_for(self, iface: str) -> Backend:
        if os.path.exists(uapi_socket_path(iface, self.socket_dir)):
            return self.uapi
        return self.netlink

    async def upsert_peer(self, iface: str, peer: PeerConfig) -> None:
        await self.backend_for(iface).upsert_peer(iface, validate_peer(peer))

    async def upsert_peers(self, iface: str, peers: list[PeerConfig]) -> None:
        """Many upserts over one connection (one request per peer, in order).
        All peers are validated before any is sent; a device error stops the
        batch and names its peer, the peers before it stay applied."""
        checked = [validate_peer(p) for p in peers]
        if checked:
            await self.backend_for(iface).upsert_peers(iface, checked)

    async def remove_peer(self, iface: str, public_key: str) -> None:
        decode_key(public_key, "public key")
        await self.backend_for(iface).remove_peer(iface, public_key)

    async def peers(self, iface: str) -> list[PeerState]:
        return await self.backend_for(iface).peers(iface)

    async def instance(self, iface: str) -> InterfaceInstance:
        return await self.backend_for(iface).instance(iface)
