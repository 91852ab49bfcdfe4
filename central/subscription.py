"""The per-user subscription endpoint: GET /sub/TOKEN -> the base64 link list.

A deliberately small read-only HTTP/1.1 server on its own port (end users'
clients fetch it, often through a reverse proxy that adds TLS). The token in
the URL is the only credential: random 192 bits, stored per user, revocable
(`edgeward users subscription USER --rotate/--revoke`). An unknown and a revoked
token get the same 404, so tokens cannot be probed. Each connection answers
one request and closes; reads are bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from edgeward import links

from .links_for_user import client_links

log = logging.getLogger("edgeward.central.subscription")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 10.0
PATH = re.compile(r"^/sub/([A-Za-z0-9_-]{16,64})/?$")


def response(status: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close",
            "Cache-Control: no-store", "Content-Type: text/plain; charset=utf-8"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def answer(storage: Any, method: str, target: str) -> bytes:
    if method not in ("GET", "HEAD"):
        return response("405 Method Not Allowed", b"only GET\n", {"Allow": "GET, HEAD"})
    match = PATH.match(target.split("?", 1)[0])
    user_id = await storage.user_of_token(match.group(1)) if match else None
    if user_id is None:
        return response("404 Not Found", b"no such subscription\n")
    user = await storage.get_user(user_id)
    uris = [link.uri for link in await client_links(storage, user_id) if link.uri]
    body = links.subscription_body(uris)
    info = (
        f"upload={user.uplink_bytes}; download={user.downlink_bytes};"
        f" total={user.data_limit_bytes or 0}; expire={(user.expires_at_ms or 0) // 1000}"
    )
    headers = {
        "Subscription-Userinfo": info,
        "Profile-Update-Interval": "12",
        "Content-Disposition": f'attachment; filename="{user_id}"',
    }
    return response("200 OK", b"" if method == "HEAD" else body, headers)


async def handle(storage: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _version = request_line.split(" ", 2)
        writer.write(await answer(storage, method, target))
        await writer.drain()
    except (
        TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):  # fmt: skip
        with contextlib.suppress(ConnectionError):
            writer.write(response("400 Bad Request", b"bad request\n"))
    except Exception:
        log.exception("subscription request failed")
        with contextlib.suppress(ConnectionError):
            writer.write(response("500 Internal Server Error", b"error\n"))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start(storage: Any, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(
        lambda r, w: handle(storage, r, w), host, port, limit=MAX_REQUEST_BYTES
    )
