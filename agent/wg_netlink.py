"""Kernel WireGuard over generic netlink, through pyroute2's `WireGuard`.

pyroute2's socket API is blocking, so every call runs in a worker thread
(`trio.to_thread.run_sync`) on a socket opened and closed inside that call:
pyroute2 sockets are not meant to be shared between threads. Opening one
(a private asyncio loop plus a family lookup) is the main cost of a call, so
`upsert_peers` applies a whole batch on one socket.

Quirks handled here (pyroute2 0.9.7): `info()` returns a dump that a large
device splits over several messages, and a peer with many allowed IPs is
itself split: its first fragment carries the counters, later fragments only
the public key and more allowed IPs. `set()` takes one peer per call, and one
attribute holds at most 64 KiB (a peer with > 1000 allowed IPs is sent in
several requests); keys come back as base64 bytes; an unknown interface is
NetlinkError(19), a non-WireGuard one NetlinkError(95).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Iterable
from typing import Any

import trio

from edgeward.agent.wireguard import (
    InterfaceInstance,
    PeerConfig,
    PeerRejectedError,
    PeerState,
    UnknownInterfaceError,
    WireGuardError,
)

ZERO_KEY_B64 = "A" * 43 + "="
# an allowed IP is <= 40 bytes of netlink attributes; the peer nest must stay < 64 KiB
ALLOWED_IPS_PER_REQUEST = 1000


# ---- pure dump merging ----------------------------------------------------


def merge_peer_fragments(fragments: Iterable[dict[str, Any]]) -> list[PeerState]:
    """Merge the peer fragments of a whole dump, in dump order. A fragment is
    {"public_key", "allowed_ips", and, on a peer's first fragment only,
    "rx_bytes", "tx_bytes", "last_handshake", "has_preshared_key"}. The kernel
    continues a split peer at the start of the next message with the same key."""
    merged: dict[str, dict[str, Any]] = {}
    for frag in fragments:
        key = frag["public_key"]
        entry = merged.get(key)
        if entry is None:
            entry = merged[key] = {
                "allowed_ips": [],
                "rx_bytes": 0,
                "tx_bytes": 0,
                "last_handshake": None,
                "has_preshared_key": False,
            }
        entry["allowed_ips"].extend(frag.get("allowed_ips", ()))
        for field in ("rx_bytes", "tx_bytes", "last_handshake", "has_preshared_key"):
            if frag.get(field) is not None:
                entry[field] = frag[field]
    return [
        PeerState(
            public_key=key,
            allowed_ips=tuple(e["allowed_ips"]),
            has_preshared_key=e["has_preshared_key"],
            rx_bytes=e["rx_bytes"],
            tx_bytes=e["tx_bytes"],
            last_handshake=e["last_handshake"],
        )
        for key, e in merged.items()
    ]


def _b64(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _handshake(value: Any) -> float | None:
    if value is None:
        return None
    sec, nsec = value.get("tv_sec", 0), value.get("tv_nsec", 0)
    return (sec + nsec / 1e9) if (sec or nsec) else None


def fragments_of(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """Peer fragments of pyroute2 dump messages, in order."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            frag: dict[str, Any] = {
                "public_key": _b64(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
                "allowed_ips": [ip["addr"] for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()],
            }
            if peer.get_attr("WGPEER_A_RX_BYTES") is not None:
                psk = peer.get_attr("WGPEER_A_PRESHARED_KEY")
                frag["rx_bytes"] = peer.get_attr("WGPEER_A_RX_BYTES")
                frag["tx_bytes"] = peer.get_attr("WGPEER_A_TX_BYTES")
                frag["has_preshared_key"] = psk is not None and _b64(psk) != ZERO_KEY_B64
                frag["last_handshake"] = _handshake(peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME"))
            out.append(frag)
    return out


def peer_requests(peer: PeerConfig) -> list[dict[str, Any]]:
    """The pyroute2 `peer` arguments making `peer` exactly as described.

    A netlink attribute holds at most 64 KiB, about 1600 allowed IPs: more
    go in follow-up requests (update_only, appending), as wg(8) does. The
    first request replaces the allowed IPs, so the result is exact."""
    first: dict[str, Any] = {
        "public_key": peer.public_key,
        "replace_allowed_ips": True,
        "allowed_ips": list(peer.allowed_ips[:ALLOWED_IPS_PER_REQUEST]),
        "preshared_key": peer.preshared_key or ZERO_KEY_B64,
        "persistent_keepalive": peer.persistent_keepalive,
    }
    if peer.endpoint is not None:
        host, _, port = peer.endpoint.rpartition(":")
        first["endpoint_addr"] = host.strip("[]")
        first["endpoint_port"] = int(port)
    rest = peer.allowed_ips[ALLOWED_IPS_PER_REQUEST:]
    return [first] + [
        {
            "public_key": peer.public_key,
            "update_only": True,
            "allowed_ips": list(rest[i : i + ALLOWED_IPS_PER_REQUEST]),
        }
        for i in range(0, len(rest), ALLOWED_IPS_PER_REQUEST)
    ]


# ---- the blocking pyroute2 calls ------------------------------------------


def _netlink_error_code(exc: BaseException) -> int | None:
    from pyroute2.netlink.exceptions import NetlinkError

    return exc.code if isinstance(exc, NetlinkError) else None


class NetlinkBackend:
    name = "netlink"

    def __init__(self, netns: str | None = None) -> None:
        # netns: operate on interfaces of a named network namespace (tests)
        self.netns = netns

    def _open(self, iface: str) -> Any:
        from pyroute2 import WireGuard as PyrouteWireGuard

        kwargs = {"netns": self.netns} if self.netns else {}
        # Built in two steps so that a constructor failing half-way (no
        # wireguard family) can still close the socket and loop it opened.
        wg = PyrouteWireGuard.__new__(PyrouteWireGuard)
        try:
            wg.__init__(**kwargs)
            return wg
        except Exception as exc:
            with contextlib.suppress(Exception):
                wg.close()
            if _netlink_error_code(exc) == errno_mod.ENOENT:
                raise UnknownInterfaceError(
                    iface, "no UAPI socket and no kernel WireGuard (generic netlink family missing)"
                ) from None
            raise

    def _raise(self, iface: str, public_key: str | None, exc: BaseException) -> None:
        code = _netlink_error_code(exc)
        if code == errno_mod.ENODEV:
            raise UnknownInterfaceError(iface, "no such device") from None
        if code == errno_mod.EOPNOTSUPP:
            raise UnknownInterfaceError(iface, "not a WireGuard device") from None
        if code is not None:
            raise PeerRejectedError(iface, public_key, -code, os.strerror(code)) from None
        if isinstance(exc, ValueError):
            raise WireGuardError(f"pyroute2 refused request for {iface!r}: {exc}") from None
        raise exc

    def _dump_sync(self, iface: str) -> list[Any]:
        wg = self._open(iface)
        try:
            return list(wg.info(iface))
        except Exception as exc:
            self._raise(iface, None, exc)
            raise  # unreachable: _raise always raises
        finally:
            wg.close()

    def _set_sync(self, iface: str, batches: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Apply (public key, requests) batches in order on one socket."""
        wg = self._open(iface)
        try:
            for public_key, requests in batches:
                try:
                    for request in requests:
                        wg.set(iface, peer=request)
                except Exception as exc:
                    self._raise(iface, public_key, exc)
        finally:
            wg.close()

    async def upsert_peer(self, iface: str, peer: PeerConfig) -> None:
        await self.upsert_peers(iface, [peer])

    async def upsert_peers(self, iface: str, peers: list[PeerConfig]) -> None:
        batches = [(peer.public_key, peer_requests(peer)) for peer in peers]
        await trio.to_thread.run_sync(self._set_sync, iface, batches)

    async def remove_peer(self, iface: str, public_key: str) -> None:
        request = {"public_key": public_key, "remove": True}
        await trio.to_thread.run_sync(self._set_sync, iface, [(public_key, [request])])

    async def peers(self, iface: str) -> list[PeerState]:
        messages = await trio.to_thread.run_sync(self._dump_sync, iface)
        return merge_peer_fragments(fragments_of(messages))

    async def instance(self, iface: str) -> InterfaceInstance:
        """The ifindex: a recreated interface always gets a new one (the
        kernel does not hand out an index again while the namespace lives)."""
        messages = await trio.to_thread.run_sync(self._dump_sync, iface)
        for msg in messages:
            index = msg.get_attr("WGDEVICE_A_IFINDEX")
            if index is not None:
                return InterfaceInstance("netlink", iface, f"ifindex={index}")
        raise WireGuardError(f"kernel dump of {iface!r} carries no ifindex")
