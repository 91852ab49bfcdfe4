"""The agent's configuration: /etc/edgeward/agent.toml, read with stdlib tomllib.

Every setting has a default and a one-line description; `edgeward-agent
config-example` prints them as a commented TOML file (the packages ship that
file as /etc/edgeward/agent.toml).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(Exception):
    """The configuration file is missing, malformed or has a bad value."""


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class CentralSettings:
    address: str = _setting("", "central's host:port; empty runs the node without central")
    addresses: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "more central replicas (host:port); after a lost or failed connection"
            " the node tries the next address in turn"
        },
    )
    server_name: str = _setting("", "name to verify in central's certificate (default: host)")
    # Under systemd hardening the agent can write only its state directory: enrollment
    # and certificate renewal put the files there.
    ca_file: str = _setting("/var/lib/edgeward-agent/pki/ca.crt", "edgeward CA certificate (PEM)")
    cert_file: str = _setting(
        "/var/lib/edgeward-agent/pki/node.crt", "this node's certificate (PEM, renewed in place)"
    )
    key_file: str = _setting(
        "/var/lib/edgeward-agent/pki/node.key", "this node's private key (PEM, 0600)"
    )
    reconnect_min: float = _setting(1.0, "first reconnect delay after a lost stream, seconds")
    reconnect_max: float = _setting(60.0, "longest reconnect delay (exponential, full jitter)")
    batch_size: int = _setting(1000, "usage deltas per batch sent to central")
    window: int = _setting(4, "usage batches in flight before waiting for central's ack")
    heartbeat_interval: float = _setting(
        15.0, "seconds between heartbeats; 3 missed answers end the connection"
    )

    @property
    def all_addresses(self) -> list[str]:
        """Every central address, in the order the node tries them (none: no central)."""
        return [self.address, *self.addresses] if self.address else []


@dataclass(frozen=True)
class CoreSettings:
    api: str = _setting("127.0.0.1:10085", "the proxy core's gRPC API address (host:port)")
    flavor: str = _setting("xray", "xray (Xray-core) or v2fly (v2ray 4.x): API package names")
    poll_interval: float = _setting(2.0, "how often the core's uptime is checked for restarts")
    concurrency: int = _setting(16, "concurrent API calls when (re)filling users")


@dataclass(frozen=True)
class WireguardSettings:
    interfaces: list[str] = field(
        default_factory=list, metadata={"doc": "WireGuard interfaces this node manages (wg0...)"}
    )


@dataclass(frozen=True)
class AgentConfig:
    node_id: str = _setting("", "this node's id; must match its certificate")
    state_dir: str = _setting("/var/lib/edgeward-agent", "journal and runtime state")
    control_socket: str = _setting(
        "/run/edgeward-agent/control.sock", "unix socket for `edgeward-agent status`/`explain`"
    )
    sample_interval: float = _setting(10.0, "seconds between traffic counter samples")
    log_level: str = _setting("info", "debug, info, warning or error")
    stop_grace: float = _setting(
        5.0, "on SIGTERM, seconds to wait for central to acknowledge the outbox"
    )
    central: CentralSettings = field(default_factory=CentralSettings)
    core: CoreSettings = field(default_factory=CoreSettings)
    wireguard: WireguardSettings = field(default_factory=WireguardSettings)

    @property
    def journal_path(self) -> Path:
        return Path(self.state_dir) / "journal.sqlite"


SECTIONS = {"central": CentralSettings, "core": CoreSettings, "wireguard": WireguardSettings}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        if key in SECTIONS and cls is AgentConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            kwargs[key] = _build(SECTIONS[key], value, f"{where} [{key}]")
            continue
        default = known[key].default
        if default is dataclasses.MISSING:
            default = known[key].default_factory()  # type: ignore[misc,operator]
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(
                f"{where}: {key} must be {expected.__name__}, not {type(value).__name__}"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of strings")
        kwargs[key] = value
    return cls(**kwargs)


def validate(config: AgentConfig) -> AgentConfig:
    if not NODE_ID.match(config.node_id):
        raise ConfigError(
            f"node_id {config.node_id!r} is not a valid node id (lowercase letters, digits, '-')"
        )
    if config.core.flavor not in ("xray", "v2fly"):
        raise ConfigError(f"core.flavor must be 'xray' or 'v2fly', not {config.core.flavor!r}")
    if config.sample_interval <= 0 or config.core.poll_interval <= 0:
        raise ConfigError("sample_interval and core.poll_interval must be positive")
    central = config.central
    if central.addresses and not central.address:
        raise ConfigError("central.addresses needs central.address (the first one to try)")
    for address in central.all_addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            setting = "central.address" if address == central.address else "central.addresses"
            raise ConfigError(f"{setting}: {address!r} is not host:port")
    if central.reconnect_min <= 0 or central.reconnect_max < central.reconnect_min:
        raise ConfigError("central.reconnect_min must be > 0 and <= central.reconnect_max")
    if central.batch_size < 1 or central.window < 1 or central.heartbeat_interval <= 0:
        raise ConfigError("central.batch_size, window and heartbeat_interval must be positive")
    if config.stop_grace < 0:
        raise ConfigError("stop_grace must not be negative")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level {config.log_level!r} is not one of debug/info/warning/error")
    return config


def parse(text: str, where: str = "agent.toml", *, check: bool = True) -> AgentConfig:
    """The config in `text`; check=False skips the whole-config checks (enrollment
    reads a config that has no node id yet)."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config = _build(AgentConfig, values, where)
    return validate(config) if check else config


def load(path: str | Path, *, check: bool = True) -> AgentConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, str(path), check=check)


def example() -> str:
    """A commented TOML file holding every setting at its default."""

    def lines(cls: type, prefix: str = "") -> list[str]:
        out: list[str] = []
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS and cls is AgentConfig:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            out.append(f"# {f.metadata['doc']}")
            out.append(f"{f.name} = {_toml_value(default)}")
        return out

    text = ["# edgeward-agent configuration. Every setting is shown at its default.", ""]
    text += lines(AgentConfig)
    for name, cls in SECTIONS.items():
        text += ["", f"[{name}]", *lines(cls)]
    return "\n".join(text) + "\n"


def to_toml(config: AgentConfig) -> str:
    """The config as a TOML file (every setting written out); `parse` reads it back."""
    text = ["# edgeward-agent configuration (written by edgeward-agent)."]
    for f in dataclasses.fields(AgentConfig):
        if f.name not in SECTIONS:
            text.append(f"{f.name} = {_toml_value(getattr(config, f.name))}")
    for name in SECTIONS:
        section = getattr(config, name)
        text += ["", f"[{name}]"]
        text += [
            f"{f.name} = {_toml_value(getattr(section, f.name))}"
            for f in dataclasses.fields(section)
        ]
    return "\n".join(text) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
