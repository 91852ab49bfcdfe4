"""Credentials central generates for a user (the database is their source of truth)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import uuid

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import InvalidInput

DEFAULT_WG_POOL = "10.66.0.0/16"


def new_uuid() -> str:
    return str(uuid.uuid4())


def normalise_uuid(text: str) -> str:
    """The canonical lowercase form of a UUID an admin supplied, or InvalidInput."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"invalid UUID: {text!r}") from None


def new_password() -> str:
    return secrets.token_urlsafe(24)


def wireguard_keypair() -> tuple[str, str]:
    """(private_key, public_key), base64 as wg(8) prints them."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    raw_private = private.private_bytes_raw()
    return base64.b64encode(raw_private).decode(), base64.b64encode(public).decode()


def wireguard_preshared_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def wireguard_address(index: int, pool: str = DEFAULT_WG_POOL) -> str:
    """The index-th host address of the pool as a /32 (or /128), index from 1."""
    network = ipaddress.ip_network(pool)
    if not 1 <= index < network.num_addresses - 1:
        raise InvalidInput(f"WireGuard address pool {pool} is full (host {index})")
    host = network[index]
    return f"{host}/{host.max_prefixlen}"


def shadowsocks_2022_key(password: str, cipher: str) -> str:
    """A Shadowsocks 2022 user key (base64, 16 or 32 bytes by method) derived from the password."""
    length = 16 if "128" in cipher else 32
    return base64.b64encode(hashlib.sha256(password.encode()).digest()[:length]).decode()
