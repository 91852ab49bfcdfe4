"""systemd's sd_notify protocol over the stdlib socket module.

Both daemons run as `Type=notify` units: READY=1 once serving, STATUS= lines for
`systemctl status`, WATCHDOG=1 while the main loop is healthy, RELOADING=1 (with
MONOTONIC_USEC, as systemd 253+ expects) on SIGHUP, STOPPING=1 on shutdown.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Sends state lines to the socket named by $NOTIFY_SOCKET (if any)."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: str | int) -> None:
        """send(READY=1, STATUS="serving") -> b"READY=1\\nSTATUS=serving"."""
        if self._socket is None or self._address is None:
            return
        payload = "\n".join(f"{key}={value}" for key, value in fields.items())
        # systemd gone or socket full: notification is best effort, serving is not
        with contextlib.suppress(OSError):
            self._socket.sendto(payload.encode(), self._address)

    def ready(self, status: str = "") -> None:
        self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def stopping(self, status: str = "") -> None:
        self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds (systemd's advice), if this process is watched."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
