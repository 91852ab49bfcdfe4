"""The daemon's local control socket: `edgeward-agent status` and `explain`.

One JSON object per line each way over a unix socket that only root (or the
service user) can open. The server side is trio; the client is plain blocking
sockets, since the CLI is a short-lived synchronous program.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The daemon could not be asked (not running, no permission, bad answer)."""


async def serve_control(
    path: str | Path,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer requests on a unix socket at path until cancelled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a previous run
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is 0600
    try:
        await listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    listeners = [trio.SocketListener(listener)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, _connection_handler(handler), listeners)
            task_status.started()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _connection_handler(handler: Handler):
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(10):
                line = await _read_line(stream)
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = await handler(request)
                except (ValueError, KeyError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                await stream.send_all(json.dumps(answer).encode() + b"\n")

    return handle


async def _read_line(stream: trio.SocketStream) -> bytes:
    buffer = b""
    while b"\n" not in buffer and len(buffer) < MAX_REQUEST:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buffer += chunk
    return buffer.split(b"\n", 1)[0]


def ask(path: str | Path, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the running daemon and return its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"edgeward-agent is not running (no control socket at {path})"
            ) from None
        except PermissionError:
            raise ControlError(f"no permission to open {path} (run as root)") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise ControlError(f"edgeward-agent did not answer within {timeout}s") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"edgeward-agent gave an unreadable answer: {data[:200]!r}") from None
    return answer
