"""central's configuration file (TOML), with documented defaults.

[server]
listen = "0.0.0.0:7443"          # host:port of the node stream (mTLS)
[storage]
database = "/var/lib/edgeward/central.sqlite"  # or "postgresql://user@host:5432/db" (replicas)
wireguard_pool = "10.66.0.0/16"   # user addresses
[pki]
ca_dir = "/etc/edgeward/pki"      # the CA: verifies nodes, revocation, enrollment
cert = "/etc/edgeward/central/server.crt"
key = "/etc/edgeward/central/server.key"
[enforcement]
interval_seconds = 5.0            # how often expiry is checked for every user
[subscription]                    # end users' subscription URLs (off when listen is unset)
listen = "127.0.0.1:7444"         # host:port of the small HTTP endpoint (put TLS in front)
public_url = "https://sub.example.com"  # what URLs handed to users start with
[retention]                       # usage history (totals are kept forever: see retention.py)
rollup_months = 13                # hourly rollups: whole months kept before the current one
delta_days = 35                   # raw deltas (the ledger): days kept; 0 = keep forever

`storage = "postgresql://..."` at the top level is accepted as a short form of
[storage] database (then without a [storage] section).
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import InvalidInput


@dataclass(frozen=True)
class CentralConfig:
    host: str = "0.0.0.0"
    port: int = 7443
    # A SQLite file, or a PostgreSQL URL (str) shared by several central replicas.
    database: Path | str = Path("/var/lib/edgeward/central.sqlite")
    wireguard_pool: str = "10.66.0.0/16"
    ca_dir: Path = Path("/etc/edgeward/pki")
    cert: Path = Path("/etc/edgeward/central/server.crt")
    key: Path = Path("/etc/edgeward/central/server.key")
    enforce_interval: float = 5.0
    subscription_host: str = ""  # "": no subscription endpoint
    subscription_port: int = 0
    subscription_url: str = ""
    rollup_months: int = 13  # 0: keep forever
    delta_days: int = 35  # 0: keep forever


KNOWN = {
    "server": {"listen"},
    "storage": {"database", "wireguard_pool"},
    "pki": {"ca_dir", "cert", "key"},
    "enforcement": {"interval_seconds"},
    "subscription": {"listen", "public_url"},
    "retention": {"rollup_months", "delta_days"},
}
# Upper bounds of [retention]: beyond them a typo is likelier than an intent.
RETENTION_LIMITS = {"rollup_months": 1200, "delta_days": 36500}


def parse_config(text: str, source: str = "config") -> CentralConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{source}: not valid TOML: {e}") from None
    if isinstance(data.get("storage"), str):  # the short form: storage = "postgresql://..."
        data["storage"] = {"database": data["storage"]}
    for section, values in data.items():
        if section not in KNOWN or not isinstance(values, dict):
            raise InvalidInput(f"{source}: unknown section [{section}]")
        unknown = set(values) - KNOWN[section]
        if unknown:
            raise InvalidInput(
                f"{source}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}"
            )
    server = data.get("server", {})
    storage = data.get("storage", {})
    pki = data.get("pki", {})
    enforcement = data.get("enforcement", {})
    defaults = CentralConfig()
    host, port = defaults.host, defaults.port
    if "listen" in server:
        host, port = _host_port(source, "server", server["listen"])
    subscription = data.get("subscription", {})
    sub_host, sub_port, sub_url = "", 0, str(subscription.get("public_url", ""))
    if "listen" in subscription:
        sub_host, sub_port = _host_port(source, "subscription", subscription["listen"])
        if not sub_url:
            sub_url = f"http://{subscription['listen']}"
    if sub_url and not sub_url.startswith(("http://", "https://")):
        raise InvalidInput(f"{source}: [subscription] public_url must start with http(s)://")
    pool = storage.get("wireguard_pool", defaults.wireguard_pool)
    try:
        ipaddress.ip_network(pool)
    except ValueError as e:
        raise InvalidInput(f"{source}: [storage] wireguard_pool: {e}") from None
    interval = enforcement.get("interval_seconds", defaults.enforce_interval)
    if not isinstance(interval, int | float) or interval <= 0:
        raise InvalidInput(f"{source}: [enforcement] interval_seconds must be > 0")
    retention = _retention(source, data.get("retention", {}), defaults)
    return CentralConfig(
        host=host,
        port=port,
        database=storage_location(source, storage.get("database", defaults.database)),
        wireguard_pool=pool,
        ca_dir=Path(pki.get("ca_dir", defaults.ca_dir)),
        cert=Path(pki.get("cert", defaults.cert)),
        key=Path(pki.get("key", defaults.key)),
        enforce_interval=float(interval),
        subscription_host=sub_host,
        subscription_port=sub_port,
        subscription_url=sub_url,
        rollup_months=retention["rollup_months"],
        delta_days=retention["delta_days"],
    )


def _retention(source: str, section: dict, defaults: CentralConfig) -> dict[str, int]:
    values = {}
    for key, limit in RETENTION_LIMITS.items():
        value = section.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise InvalidInput(
                f"{source}: [retention] {key} must be a whole number from 0 (keep forever)"
                f" to {limit}, got {value!r}"
            )
        values[key] = value
    return values


POSTGRESQL_SCHEMES = ("postgresql", "postgres")


def storage_location(source: str, value: object) -> Path | str:
    """A PostgreSQL URL (kept as text) or a SQLite file path."""
    if not isinstance(value, str | Path) or not str(value):
        raise InvalidInput(f"{source}: [storage] database must be a file path or a URL")
    text = str(value)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if not scheme:
        return Path(text)
    if scheme not in POSTGRESQL_SCHEMES:
        raise InvalidInput(
            f"{source}: [storage] database: unsupported URL scheme {scheme!r}"
            " (a file path, or postgresql://user@host:port/database)"
        )
    try:
        url = urlsplit(text)
        url.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as e:
        raise InvalidInput(f"{source}: [storage] database: not a valid URL: {e}") from None
    if not (url.hostname or "host=" in url.query) or not url.path.strip("/"):
        raise InvalidInput(
            f"{source}: [storage] database: a PostgreSQL URL needs a host and a database"
            " (postgresql://user@host:port/database)"
        )
    return text


def _host_port(source: str, section: str, value: object) -> tuple[str, int]:
    host, sep, port_text = str(value).rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidInput(f"{source}: [{section}] listen must be host:port, got {value!r}")
    return host.strip("[]"), int(port_text)


def load_config(path: Path) -> CentralConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read config {path}: {e.strerror}") from None
    return parse_config(text, str(path))
