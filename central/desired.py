"""A node's desired state, derived from its users and inbounds (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeward.proto import v1

from .credentials import shadowsocks_2022_key


@dataclass(frozen=True)
class Inbound:
    """Something a node serves: a proxy inbound (by tag) or a WireGuard interface."""

    tag: str
    engine: v1.Engine
    protocol: v1.Protocol = v1.Protocol.UNSPECIFIED
    flow: str = ""
    cipher: str = ""


@dataclass(frozen=True)
class UserState:
    user_id: str
    uuid: str
    password: str
    wg_public_key: str
    wg_preshared_key: str
    wg_address: str
    expires_at_ms: int | None
    admin_suspended: bool
    enforced_reason: v1.Reason
    engines: tuple[v1.Engine, ...] = ()  # from the user's plan; empty: every engine


def engines_from_text(text: str) -> tuple[v1.Engine, ...]:
    """A plan's stored engines ("1,2") as Engines; "" means every engine."""
    return tuple(v1.Engine(int(e)) for e in text.split(",") if e)


def _allows(user: UserState, inbound: Inbound) -> bool:
    return not user.engines or inbound.engine in user.engines


def proxy_secret(user: UserState, inbound: Inbound) -> str:
    if inbound.protocol in (v1.Protocol.VLESS, v1.Protocol.VMESS):
        return user.uuid
    if inbound.protocol == v1.Protocol.SHADOWSOCKS_2022:
        return shadowsocks_2022_key(user.password, inbound.cipher)
    return user.password


def user_spec(user: UserState, inbounds: Sequence[Inbound]) -> v1.UserSpec:
    """What a node must apply for one user: a credential per proxy inbound, a peer per
    WireGuard interface, the expiry, and whether the user is suspended (and why)."""
    proxies = [
        v1.ProxyCredential(
            inbound_tag=inbound.tag,
            protocol=inbound.protocol,
            email=user.user_id,
            secret=proxy_secret(user, inbound),
            flow=inbound.flow,
            cipher=inbound.cipher,
        )
        for inbound in inbounds
        if inbound.engine == v1.Engine.PROXY and _allows(user, inbound)
    ]
    peers = [
        v1.WireguardPeer(
            interface=inbound.tag,
            public_key=user.wg_public_key,
            allowed_ips=[user.wg_address],
            preshared_key=user.wg_preshared_key,
        )
        for inbound in inbounds
        if inbound.engine == v1.Engine.WIREGUARD and _allows(user, inbound)
    ]
    reason = v1.Reason.ADMIN if user.admin_suspended else user.enforced_reason
    return v1.UserSpec(
        user_id=user.user_id,
        proxies=proxies,
        wireguard=peers,
        expires_at_ms=user.expires_at_ms or 0,
        suspended=reason != v1.Reason.UNSPECIFIED,
        suspended_reason=reason,
    )


def snapshot(revision: int, users: Sequence[UserState], inbounds: Sequence[Inbound]):
    return v1.DesiredSnapshot(
        revision=revision, users=[user_spec(user, inbounds) for user in users]
    )


def change(
    revision: int,
    base_revision: int,
    upserts: Sequence[UserState],
    removed_user_ids: Sequence[str],
    inbounds: Sequence[Inbound],
) -> v1.DesiredChange:
    return v1.DesiredChange(
        revision=revision,
        base_revision=base_revision,
        upserts=[user_spec(user, inbounds) for user in upserts],
        removed_user_ids=sorted(removed_user_ids),
    )
