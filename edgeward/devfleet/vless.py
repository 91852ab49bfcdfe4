"""A minimal VLESS client (TCP, no encryption) in plain Python sockets.

One request = one TCP connection to a node's VLESS inbound carrying the VLESS
request header and an HTTP GET for the blob server. The core answers only
when the UUID is one of its users, so a completed fetch proves the user is
served on that node; a refused user gets the connection closed with no
reply. Cheap enough to probe thousands of users (the issuance burst test) and
to drive steady traffic (the chaos harness), where a v2ray client process per
user would not fit on a small machine.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import uuid as uuidlib

COMMAND_TCP = 1
ADDRESS_IPV4 = 1


class NotServed(Exception):
    """The node closed the connection without a VLESS reply: the user is not served."""


def request_header(user_uuid: str, host: str, port: int) -> bytes:
    """Version 0, UUID, no addons, TCP command, target port and IPv4 address."""
    return (
        b"\x00"
        + uuidlib.UUID(user_uuid).bytes
        + b"\x00"
        + bytes([COMMAND_TCP])
        + struct.pack(">H", port)
        + bytes([ADDRESS_IPV4])
        + ipaddress.IPv4Address(host).packed
    )


def http_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode()


def fetch(
    node: tuple[str, int],
    user_uuid: str,
    target: tuple[str, int],
    path: str,
    timeout: float = 10.0,
) -> int:
    """GET path from target through the node as user; the number of payload bytes
    received after the VLESS reply header (HTTP headers + body). Raises NotServed."""
    with socket.create_connection(node, timeout=timeout) as sock:
        sock.sendall(request_header(user_uuid, *target) + http_get(*target, path))
        head = _recv_exact(sock, 2)
        if head is None:
            raise NotServed(f"{node[0]}:{node[1]} closed the connection: user not served")
        if head[1]:
            _recv_exact(sock, head[1])  # response addons
        return _read_http_response(sock)


def _read_http_response(sock: socket.socket) -> int:
    """Bytes of the HTTP response (headers + body). Stops at Content-Length rather
    than at the close: the core keeps a half-closed connection up for a while."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return len(data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total, received = len(data), len(body)
    while length is None or received < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        total += len(chunk)
        received += len(chunk)
    return total


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
