"""How the `edgeward` CLI reaches central's AdminService over mTLS.

Settings, first found wins for each: command-line option, environment variable,
config file (--config, $EDGEWARD_CONFIG, or ~/.config/edgeward/admin.toml):

  option          env                    admin.toml key
  --central       EDGEWARD_CENTRAL       central = "central.example.com:7443"
  --cert          EDGEWARD_CERT          cert = "/path/admin.crt"
  --key           EDGEWARD_KEY           key = "/path/admin.key"
  --ca            EDGEWARD_CA            ca = "/path/ca.crt"
  --server-name   EDGEWARD_SERVER_NAME   server_name = "central"  (TLS name; default: host)

Relative paths in the file are relative to the file. Exit codes of every command:
0 ok, 2 bad input, 3 not found, 4 conflict (exists, in use), 5 refused (role or
certificate), 6 central unreachable or not configured, 1 anything else.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgeward.proto import v1

T = TypeVar("T")
DEFAULT_CONFIG = Path("~/.config/edgeward/admin.toml")
TIMEOUT = 30.0

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_REFUSED, EXIT_UNREACHABLE = (
    0, 1, 2, 3, 4, 5, 6,
)  # fmt: skip
STATUS_EXIT = {
    Status.INVALID_ARGUMENT: EXIT_INPUT,
    Status.NOT_FOUND: EXIT_NOT_FOUND,
    Status.ALREADY_EXISTS: EXIT_CONFLICT,
    Status.FAILED_PRECONDITION: EXIT_CONFLICT,
    Status.PERMISSION_DENIED: EXIT_REFUSED,
    Status.UNAUTHENTICATED: EXIT_REFUSED,
    Status.UNAVAILABLE: EXIT_UNREACHABLE,
    Status.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
}
KEYS = ("central", "cert", "key", "ca", "server_name")


class CommandError(click.ClickException):
    """An error shown as `error: MESSAGE` with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click's is a class default

    def format_message(self) -> str:
        return self.message


@dataclass(frozen=True)
class AdminSettings:
    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    server_name: str = ""


def load_settings(options: dict[str, Any], env: dict[str, str] | None = None) -> AdminSettings:
    env = dict(os.environ) if env is None else env
    config_path = options.get("config") or env.get("EDGEWARD_CONFIG")
    file_values: dict[str, Any] = {}
    base = Path.cwd()
    path = Path(config_path).expanduser() if config_path else DEFAULT_CONFIG.expanduser()
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CommandError(f"cannot read {path}: {e}", EXIT_INPUT) from None
        unknown = set(file_values) - set(KEYS)
        if unknown:
            raise CommandError(
                f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(KEYS)})",
                EXIT_INPUT,
            )
        base = path.parent
    elif config_path:
        raise CommandError(f"config file {path} does not exist", EXIT_INPUT)
    values: dict[str, Any] = {}
    for key in KEYS:
        env_value = env.get(f"EDGEWARD_{key.upper()}")
        if options.get(key):
            values[key] = options[key]
        elif env_value:
            values[key] = env_value
        elif file_values.get(key):
            value = file_values[key]
            is_path = key in ("cert", "key", "ca")
            values[key] = base / Path(value).expanduser() if is_path else value
    missing = [k for k in ("central", "cert", "key", "ca") if not values.get(k)]
    if missing:
        raise CommandError(
            f"not configured: {', '.join(missing)} (give --{missing[0]}, set"
            f" EDGEWARD_{missing[0].upper()}, or write {DEFAULT_CONFIG})",
            EXIT_UNREACHABLE,
        )
    host, sep, port = str(values["central"]).rpartition(":")
    if not sep or not port.isdigit():
        raise CommandError(f"central must be HOST:PORT, got {values['central']!r}", EXIT_INPUT)
    return AdminSettings(
        host.strip("[]"), int(port), Path(values["cert"]), Path(values["key"]),
        Path(values["ca"]), values.get("server_name") or "",
    )  # fmt: skip


async def close_channel(channel: Channel) -> None:
    """Close and wait (bounded) until the transport is really gone, so no socket
    outlives the command."""
    protocol = getattr(channel, "_protocol", None)
    transport = getattr(getattr(protocol, "connection", None), "_transport", None)
    channel.close()
    if transport is not None:
        # Every answer is in: drop the connection without waiting for the peer's TLS
        # close_notify (which grpclib's server may never send).
        transport.abort()
    for _ in range(200):  # at most ~1 s
        if protocol is None or protocol.handler.connection_lost:
            return
        await asyncio.sleep(0.005)


def call(settings: AdminSettings, work: Callable[[v1.AdminServiceStub], Awaitable[T]]) -> T:
    """Run `work(stub)` against central; gRPC errors become CommandErrors."""
    from edgeward.pki.tls import client_context

    try:
        ssl = client_context(settings.ca, settings.cert, settings.key)
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot load the admin certificate: {e}", EXIT_INPUT) from None

    async def run() -> T:
        config = Configuration(ssl_target_name_override=settings.server_name or None)
        channel = Channel(settings.host, settings.port, ssl=ssl, config=config)
        try:
            return await work(v1.AdminServiceStub(channel, timeout=TIMEOUT))
        finally:
            await close_channel(channel)

    try:
        return asyncio.run(run())
    except GRPCError as e:
        code = STATUS_EXIT.get(e.status, EXIT_ERROR)
        raise CommandError(e.message or e.status.name, code) from None
    except (OSError, StreamTerminatedError, TimeoutError) as e:
        raise CommandError(
            f"cannot reach central at {settings.host}:{settings.port}: {e}", EXIT_UNREACHABLE
        ) from None
