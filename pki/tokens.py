"""Enrollment tokens: self-describing, tamper-evident, pure.

A token is `ewt1.<payload>.<mac>`: payload is base64url JSON carrying the node id,
a random token id and the expiry; mac is HMAC-SHA256 over `ewt1.<payload>` with a
secret kept in the CA directory. Whether a token was already used is state, kept by
the store; these functions only mint and read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edgeward.pki import names
from edgeward.pki.errors import InvalidInput, TokenRejected

PREFIX = "ewt1"
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=30)


@dataclass(frozen=True)
class TokenClaims:
    node_id: str
    token_id: str
    expires_at: datetime


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def mint_token(
    secret: bytes, node_id: str, now: datetime, ttl: timedelta = DEFAULT_TTL
) -> tuple[str, TokenClaims]:
    names.validate_node_id(node_id)
    if not timedelta(0) < ttl <= MAX_TTL:
        raise InvalidInput(f"token lifetime must be between 1 second and {MAX_TTL.days} days")
    claims = TokenClaims(
        node_id=node_id,
        token_id=secrets.token_hex(16),
        expires_at=(now + ttl).replace(microsecond=0),
    )
    payload = json.dumps(
        {"n": claims.node_id, "t": claims.token_id, "e": int(claims.expires_at.timestamp())},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    signed_part = f"{PREFIX}.{_b64(payload)}"
    return f"{signed_part}.{_b64(_mac(secret, signed_part))}", claims


def read_token(secret: bytes, token: str) -> TokenClaims:
    """Check the token's MAC and decode its claims. Expiry and use are checked by the caller."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenRejected("enrollment token is malformed (expected ewt1.<payload>.<mac>)")
    signed_part = f"{parts[0]}.{parts[1]}"
    try:
        mac = _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise TokenRejected("enrollment token is malformed (bad MAC encoding)") from None
    if not hmac.compare_digest(mac, _mac(secret, signed_part)):
        raise TokenRejected("enrollment token is not valid for this CA (tampered or foreign)")
    try:
        payload = json.loads(_unb64(parts[1]))
        claims = TokenClaims(
            node_id=str(payload["n"]),
            token_id=str(payload["t"]),
            expires_at=datetime.fromtimestamp(int(payload["e"]), UTC),
        )
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise TokenRejected("enrollment token payload is unreadable") from None
    return claims


def check_claims(claims: TokenClaims, node_id: str, now: datetime) -> None:
    """Refuse a token bound to another node or past its expiry."""
    if claims.node_id != node_id:
        raise TokenRejected(
            f"enrollment token is bound to node {claims.node_id!r}, not {node_id!r}"
        )
    if now >= claims.expires_at:
        raise TokenRejected(
            f"enrollment token expired at {claims.expires_at.isoformat()}; mint a new one"
        )
