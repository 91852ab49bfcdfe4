"""Userspace WireGuard (wireguard-go) over its UAPI unix socket.

Protocol: `get=1\\n\\n` answers `key=value` lines ending `errno=0\\n\\n`;
`set=1\\n...\\n\\n` configures and answers `errno=N\\n\\n`. Keys are hex on this
wire. A set is not atomic (lines before a bad one stay applied), so every
request carries exactly one peer and everything is validated beforehand.
"""

from __future__ import annotations

import os
import socket
import struct

import trio

from edgeward.agent.wireguard import (
    InterfaceInstance,
    PeerConfig,
    PeerRejectedError,
    PeerState,
    UnknownInterfaceError,
    WireGuardError,
    decode_key,
    encode_key,
    uapi_socket_path,
)

REQUEST_TIMEOUT = 10.0
MAX_RESPONSE = 64 * 1024 * 1024
ZERO_KEY_HEX = "0" * 64


# ---- pure protocol --------------------------------------------------------


def format_upsert(peer: PeerConfig) -> str:
    """One `set` request making `peer` exactly as described (peer validated)."""
    lines = [
        "set=1",
        f"public_key={decode_key(peer.public_key).hex()}",
        "replace_allowed_ips=true",
        "preshared_key="
        + (decode_key(peer.preshared_key).hex() if peer.preshared_key else ZERO_KEY_HEX),
        f"persistent_keepalive_interval={peer.persistent_keepalive}",
    ]
    if peer.endpoint is not None:
        lines.append(f"endpoint={peer.endpoint}")
    lines.extend(f"allowed_ip={ip}" for ip in peer.allowed_ips)
    return "\n".join(lines) + "\n\n"


def format_remove(public_key: str) -> str:
    return f"set=1\npublic_key={decode_key(public_key).hex()}\nremove=true\n\n"


def response_errno(text: str) -> int:
    """The errno of a UAPI answer (the last `errno=` line)."""
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            return int(line.removeprefix("errno="))
    raise WireGuardError(f"UAPI answer without errno line: {text[-200:]!r}")


def _hex_key(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise WireGuardError(f"UAPI answer carries a malformed key {value!r}") from None
    return encode_key(raw)


def parse_get(text: str) -> tuple[dict[str, str], list[PeerState]]:
    """Parse a full `get=1` answer: device fields, then every peer (each peer
    starts at `public_key=`; `allowed_ip` repeats)."""
    device: dict[str, str] = {}
    peers: list[PeerState] = []
    current: dict | None = None

    def finish() -> None:
        if current is None:
            return
        sec = current["hs_sec"]
        nsec = current["hs_nsec"]
        peers.append(
            PeerState(
                public_key=current["public_key"],
                allowed_ips=tuple(current["allowed_ips"]),
                has_preshared_key=current["psk"],
                rx_bytes=current["rx"],
                tx_bytes=current["tx"],
                last_handshake=(sec + nsec / 1e9) if (sec or nsec) else None,
            )
        )

    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError(f"UAPI answer has a malformed line {line!r}")
        if key == "errno":
            continue
        if key == "public_key":
            finish()
            current = {
                "public_key": _hex_key(value),
                "allowed_ips": [],
                "psk": False,
                "rx": 0,
                "tx": 0,
                "hs_sec": 0,
                "hs_nsec": 0,
            }
        elif current is None:
            device[key] = value
        elif key == "allowed_ip":
            current["allowed_ips"].append(value)
        elif key == "preshared_key":
            current["psk"] = value != ZERO_KEY_HEX
        elif key == "rx_bytes":
            current["rx"] = int(value)
        elif key == "tx_bytes":
            current["tx"] = int(value)
        elif key == "last_handshake_time_sec":
            current["hs_sec"] = int(value)
        elif key == "last_handshake_time_nsec":
            current["hs_nsec"] = int(value)
    finish()
    return device, peers


def check_set_answer(iface: str, public_key: str | None, answer: str) -> None:
    errno = response_errno(answer)
    if errno != 0:
        raise PeerRejectedError(iface, public_key, errno, os.strerror(abs(errno)))


# ---- the socket client ----------------------------------------------------


class UapiConnection:
    """One request/answer exchange per call on an open UAPI socket."""

    def __init__(self, iface: str, stream: trio.SocketStream) -> None:
        self.iface = iface
        self.stream = stream

    def peer_pid(self) -> int:
        creds = self.stream.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid

    async def request(self, text: str) -> str:
        """Send one request, return the whole answer (through its blank line)."""
        await self.stream.send_all(text.encode("ascii"))
        buf = bytearray()
        while not buf.endswith(b"\n\n"):
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise WireGuardError(f"UAPI socket of {self.iface!r} closed mid-answer")
            buf += chunk
            if len(buf) > MAX_RESPONSE:
                raise WireGuardError(f"UAPI answer of {self.iface!r} exceeds {MAX_RESPONSE} bytes")
        return buf.decode("ascii")


async def open_uapi(iface: str, socket_dir: str) -> UapiConnection:
    path = uapi_socket_path(iface, socket_dir)
    try:
        stream = await trio.open_unix_socket(path)
    except FileNotFoundError:
        raise UnknownInterfaceError(iface, f"no UAPI socket at {path}") from None
    except ConnectionRefusedError:
        raise UnknownInterfaceError(
            iface, f"UAPI socket {path} refuses connections (its process is gone)"
        ) from None
    return UapiConnection(iface, stream)


class UapiBackend:
    name = "uapi"

    def __init__(self, socket_dir: str) -> None:
        self.socket_dir = socket_dir

    async def _exchange(self, iface: str, text: str) -> str:
        return (await self._exchange_many(iface, [text]))[0]

    async def _exchange_many(self, iface: str, texts: list[str]) -> list[str]:
        """Requests in order on one connection, each bounded in time."""
        with trio.fail_after(REQUEST_TIMEOUT):
            conn = await open_uapi(iface, self.socket_dir)
        answers = []
        async with conn.stream:
            for text in texts:
                with trio.fail_after(REQUEST_TIMEOUT):
                    answers.append(await conn.request(text))
        return answers

    async def set_raw(self, iface: str, text: str, public_key: str | None = None) -> None:
        """Send one `set` request; a negative errno raises PeerRejectedError."""
        check_set_answer(iface, public_key, await self._exchange(iface, text))

    async def upsert_peer(self, iface: str, peer: PeerConfig) -> None:
        await self.set_raw(iface, format_upsert(peer), peer.public_key)

    async def upsert_peers(self, iface: str, peers: list[PeerConfig]) -> None:
        with trio.fail_after(REQUEST_TIMEOUT):
            conn = await open_uapi(iface, self.socket_dir)
        async with conn.stream:
            for peer in peers:
                with trio.fail_after(REQUEST_TIMEOUT):
                    answer = await conn.request(format_upsert(peer))
                check_set_answer(iface, peer.public_key, answer)

    async def remove_peer(self, iface: str, public_key: str) -> None:
        await self.set_raw(iface, format_remove(public_key), public_key)

    async def peers(self, iface: str) -> list[PeerState]:
        answer = await self._exchange(iface, "get=1\n\n")
        errno = response_errno(answer)
        if errno != 0:
            raise PeerRejectedError(iface, None, errno, os.strerror(abs(errno)))
        return parse_get(answer)[1]

    async def instance(self, iface: str) -> InterfaceInstance:
        """wireguard-go serves one device per process and recreates its socket
        on start: the serving PID plus the socket's inode and ctime change
        whenever the interface is recreated. Listen port and private key do
        not: a restarted device is usually configured with the same ones."""
        path = uapi_socket_path(iface, self.socket_dir)
        with trio.fail_after(REQUEST_TIMEOUT):
            conn = await open_uapi(iface, self.socket_dir)
            async with conn.stream:
                pid = conn.peer_pid()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UnknownInterfaceError(iface, f"UAPI socket {path} vanished") from None
        return InterfaceInstance("uapi", iface, f"pid={pid},ino={st.st_ino},ctime={st.st_ctime_ns}")
