"""Enrollment tokens as pure functions: minting, tamper evidence, binding, expiry."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta

import pytest

from edgeward.pki import tokens
from edgeward.pki.errors import InvalidInput, TokenRejected

SECRET = b"s" * 32


def test_minted_token_reads_back_its_claims(now: datetime) -> None:
    token, claims = tokens.mint_token(SECRET, "edge-1", now, timedelta(minutes=10))
    assert token.startswith("ewt1.")
    read = tokens.read_token(SECRET, token)
    assert read == claims
    assert read.node_id == "edge-1"
    assert read.expires_at == now + timedelta(minutes=10)
    tokens.check_claims(read, "edge-1", now)


def test_token_ids_are_unique(now: datetime) -> None:
    ids = {tokens.mint_token(SECRET, "edge-1", now)[1].token_id for _ in range(50)}
    assert len(ids) == 50


def _swap_payload(token: str, **changes: object) -> str:
    prefix, payload, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{prefix}.{new}.{mac}"


def test_tampered_payload_is_rejected(now: datetime) -> None:
    token, _ = tokens.mint_token(SECRET, "edge-1", now)
    for forged in (
        _swap_payload(token, n="edge-2"),
        _swap_payload(token, e=int((now + timedelta(days=365)).timestamp())),
    ):
        with pytest.raises(TokenRejected, match="not valid for this CA"):
            tokens.read_token(SECRET, forged)


def test_token_from_another_secret_is_rejected(now: datetime) -> None:
    token, _ = tokens.mint_token(b"x" * 32, "edge-1", now)
    with pytest.raises(TokenRejected, match="not valid for this CA"):
        tokens.read_token(SECRET, token)


@pytest.mark.parametrize("garbage", ["", "abc", "ewt1.a", "ewt2.a.b", "ewt1.a.b.c", "ewt1.a.@@"])
def test_malformed_tokens_are_rejected(garbage: str) -> None:
    with pytest.raises(TokenRejected, match=r"malformed|not valid"):
        tokens.read_token(SECRET, garbage)


def test_token_bound_to_another_node_is_rejected(now: datetime) -> None:
    _, claims = tokens.mint_token(SECRET, "edge-1", now)
    with pytest.raises(TokenRejected, match="bound to node 'edge-1', not 'edge-2'"):
        tokens.check_claims(claims, "edge-2", now)


def test_expired_token_is_rejected(now: datetime) -> None:
    _, claims = tokens.mint_token(SECRET, "edge-1", now, timedelta(minutes=5))
    tokens.check_claims(claims, "edge-1", now + timedelta(minutes=4, seconds=59))
    with pytest.raises(TokenRejected, match=r"expired at .*mint a new one"):
        tokens.check_claims(claims, "edge-1", now + timedelta(minutes=5))


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), timedelta(days=31)])
def test_bad_token_lifetime_is_refused(now: datetime, ttl: timedelta) -> None:
    with pytest.raises(InvalidInput, match="token lifetime"):
        tokens.mint_token(SECRET, "edge-1", now, ttl)


def test_token_for_invalid_node_id_is_refused(now: datetime) -> None:
    with pytest.raises(InvalidInput, match="invalid node id"):
        tokens.mint_token(SECRET, "Edge_1", now)
