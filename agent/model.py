"""Value types for what a node must serve, and their conversion from/to the wire.

A node's desired state is a revision plus users; each user carries credentials
per engine: proxy users (applied to the proxy core by email) and WireGuard
peers (applied to an interface by public key). Everything here is immutable and
validated on construction from the wire, so later stages (reconcile, drivers)
never see a malformed credential.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgeward.proto import v1


class ProxyProtocol(enum.Enum):
    VLESS = "vless"
    VMESS = "vmess"
    TROJAN = "trojan"
    SHADOWSOCKS = "shadowsocks"
    SHADOWSOCKS_2022 = "shadowsocks-2022"


# Protocols whose secret is a UUID (the core rejects anything else).
UUID_PROTOCOLS = frozenset({ProxyProtocol.VLESS, ProxyProtocol.VMESS})

# Shadowsocks (AEAD) methods the agent knows how to encode; the flavor maps
# each name to its core's CipherType number.
SHADOWSOCKS_CIPHERS = frozenset(
    {"aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "xchacha20-poly1305"}
)
_CIPHER_ALIASES = {
    "chacha20-ietf-poly1305": "chacha20-poly1305",
    "xchacha20-ietf-poly1305": "xchacha20-poly1305",
}

_WIRE_TO_PROTOCOL = {
    int(v1.Protocol.VLESS): ProxyProtocol.VLESS,
    int(v1.Protocol.VMESS): ProxyProtocol.VMESS,
    int(v1.Protocol.TROJAN): ProxyProtocol.TROJAN,
    int(v1.Protocol.SHADOWSOCKS): ProxyProtocol.SHADOWSOCKS,
    int(v1.Protocol.SHADOWSOCKS_2022): ProxyProtocol.SHADOWSOCKS_2022,
}
_PROTOCOL_TO_WIRE = {p: v1.Protocol(n) for n, p in _WIRE_TO_PROTOCOL.items()}


class SpecError(ValueError):
    """A user's desired state is malformed; the message names the user."""

    def __init__(self, user_id: str, problem: str) -> None:
        super().__init__(f"user {user_id!r}: {problem}")
        self.user_id = user_id
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ProxyUser:
    """One user on one inbound of the proxy core. The email is the core-side key."""

    inbound_tag: str
    protocol: ProxyProtocol
    email: str
    secret: str  # UUID (VLESS/VMess), password (Trojan/Shadowsocks) or key (SS2022)
    flow: str = ""  # VLESS only, e.g. "xtls-rprx-vision"
    cipher: str = ""  # Shadowsocks only, a name from SHADOWSOCKS_CIPHERS

    @property
    def key(self) -> tuple[str, str]:
        """Identity inside the core: the cores compare emails case-insensitively."""
        return (self.inbound_tag, self.email.lower())

    @property
    def secret_key(self) -> tuple[str, str]:
        """What must be unique per inbound: the core routes a connection by its secret."""
        return (
            self.inbound_tag,
            self.secret.lower() if self.protocol in UUID_PROTOCOLS else self.secret,
        )


@dataclass(frozen=True, slots=True)
class WireguardPeer:
    """One peer on one WireGuard interface. Keys are base64, as `wg(8)` shows them."""

    interface: str
    public_key: str
    allowed_ips: tuple[str, ...] = ()  # normalised CIDRs, sorted
    preshared_key: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.interface, self.public_key)


@dataclass(frozen=True, slots=True)
class DesiredUser:
    user_id: str
    proxies: tuple[ProxyUser, ...] = ()
    wireguard: tuple[WireguardPeer, ...] = ()
    expires_at_ms: int = 0  # 0: never
    suspended: bool = False
    suspended_reason: int = 0  # edgeward.v1.Reason value

    def is_active(self, now_ms: int) -> bool:
        """Whether the user belongs in the applied set at `now_ms`."""
        if self.suspended:
            return False
        return self.expires_at_ms == 0 or now_ms < self.expires_at_ms


@dataclass(frozen=True, slots=True)
class DesiredState:
    revision: int
    users: tuple[DesiredUser, ...] = ()
    _by_id: dict[str, DesiredUser] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, DesiredUser] = {}
        for user in self.users:
            if user.user_id in by_id:
                raise SpecError(user.user_id, "appears twice in the desired state")
            by_id[user.user_id] = user
        object.__setattr__(self, "_by_id", by_id)

    def user(self, user_id: str) -> DesiredUser | None:
        return self._by_id.get(user_id)


# ---------------------------------------------------------------- validation


def _normalise_uuid(user_id: str, value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError):
        raise SpecError(user_id, f"invalid UUID {value!r}") from None
    return str(parsed)


def _normalise_wg_key(user_id: str, what: str, value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(user_id, f"WireGuard {what} {value!r} is not base64") from None
    if len(raw) != 32:
        raise SpecError(user_id, f"WireGuard {what} {value!r} is not 32 bytes")
    return base64.b64encode(raw).decode()


def make_proxy_user(
    user_id: str,
    *,
    inbound_tag: str,
    protocol: ProxyProtocol,
    email: str,
    secret: str,
    flow: str = "",
    cipher: str = "",
) -> ProxyUser:
    """A validated ProxyUser; raises SpecError naming `user_id`."""
    if not inbound_tag:
        raise SpecError(user_id, "proxy credential has an empty inbound tag")
    if not email:
        raise SpecError(user_id, f"proxy credential on inbound {inbound_tag!r} has an empty email")
    if not secret:
        raise SpecError(user_id, f"proxy credential {email!r} has an empty secret")
    if protocol in UUID_PROTOCOLS:
        secret = _normalise_uuid(user_id, secret)
    if flow and protocol is not ProxyProtocol.VLESS:
        raise SpecError(user_id, f"flow {flow!r} is only valid for VLESS, not {protocol.value}")
    if protocol is ProxyProtocol.SHADOWSOCKS:
        cipher = _CIPHER_ALIASES.get(cipher.lower(), cipher.lower())
        if cipher not in SHADOWSOCKS_CIPHERS:
            raise SpecError(user_id, f"unknown Shadowsocks cipher {cipher!r} for {email!r}")
    elif cipher:
        raise SpecError(user_id, f"cipher {cipher!r} is only valid for Shadowsocks")
    return ProxyUser(inbound_tag, protocol, email, secret, flow, cipher)


def make_wireguard_peer(
    user_id: str,
    *,
    interface: str,
    public_key: str,
    allowed_ips: Iterable[str] = (),
    preshared_key: str = "",
) -> WireguardPeer:
    """A validated WireguardPeer; raises SpecError naming `user_id`."""
    if not interface:
        raise SpecError(user_id, "WireGuard peer has an empty interface name")
    public_key = _normalise_wg_key(user_id, "public key", public_key)
    if preshared_key:
        preshared_key = _normalise_wg_key(user_id, "preshared key", preshared_key)
    networks = []
    for cidr in allowed_ips:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=True))
        except ValueError as e:
            raise SpecError(user_id, f"WireGuard allowed IP {cidr!r}: {e}") from None
    # Sorted and de-duplicated so that equal sets compare equal.
    ips = tuple(sorted({str(n) for n in networks}))
    return WireguardPeer(interface, public_key, ips, preshared_key)


# ---------------------------------------------------------------- wire conversion


def user_from_wire(spec: v1.UserSpec) -> DesiredUser:
    """Validate one UserSpec; raises SpecError naming the user."""
    user_id = spec.user_id
    if not user_id:
        raise SpecError(user_id, "empty user id")
    proxies = []
    for cred in spec.proxies:
        protocol = _WIRE_TO_PROTOCOL.get(int(cred.protocol))
        if protocol is None:
            raise SpecError(
                user_id, f"unknown protocol {cred.protocol!r} for credential {cred.email!r}"
            )
        proxies.append(
            make_proxy_user(
                user_id,
                inbound_tag=cred.inbound_tag,
                protocol=protocol,
                email=cred.email,
                secret=cred.secret,
                flow=cred.flow,
                cipher=cred.cipher,
            )
        )
    peers = [
        make_wireguard_peer(
            user_id,
            interface=p.interface,
            public_key=p.public_key,
            allowed_ips=p.allowed_ips,
            preshared_key=p.preshared_key,
        )
        for p in spec.wireguard
    ]
    return DesiredUser(
        user_id=user_id,
        proxies=tuple(proxies),
        wireguard=tuple(peers),
        expires_at_ms=spec.expires_at_ms,
        suspended=spec.suspended,
        suspended_reason=int(spec.suspended_reason),
    )


def user_to_wire(user: DesiredUser) -> v1.UserSpec:
    return v1.UserSpec(
        user_id=user.user_id,
        proxies=[
            v1.ProxyCredential(
                inbound_tag=p.inbound_tag,
                protocol=_PROTOCOL_TO_WIRE[p.protocol],
                email=p.email,
                secret=p.secret,
                flow=p.flow,
                cipher=p.cipher,
            )
            for p in user.proxies
        ],
        wireguard=[
            v1.WireguardPeer(
                interface=w.interface,
                public_key=w.public_key,
                allowed_ips=list(w.allowed_ips),
                preshared_key=w.preshared_key,
            )
            for w in user.wireguard
        ],
        expires_at_ms=user.expires_at_ms,
        suspended=user.suspended,
        suspended_reason=v1.Reason(user.suspended_reason),
    )


def encode_users(users: Iterable[DesiredUser]) -> dict[str, bytes]:
    """user id -> serialized UserSpec (the journal's per-user rows)."""
    return {user.user_id: bytes(user_to_wire(user)) for user in users}


def desired_from_wire(snapshot: v1.DesiredSnapshot) -> DesiredState:
    """The whole snapshot, or SpecError listing every bad user (nothing is half-taken)."""
    state, errors = desired_from_wire_lenient(snapshot)
    if errors:
        if len(errors) == 1:
            raise errors[0]
        first = errors[0]
        raise SpecError(
            first.user_id,
            f"{first.problem} (and {len(errors) - 1} more: "
            + "; ".join(str(e) for e in errors[1:])
            + ")",
        )
    return state


def desired_from_wire_lenient(
    snapshot: v1.DesiredSnapshot,
) -> tuple[DesiredState, list[SpecError]]:
    """Valid users kept, bad ones returned as errors (for a daemon that must keep serving)."""
    users: list[DesiredUser] = []
    errors: list[SpecError] = []
    counts = Counter(spec.user_id for spec in snapshot.users)
    for user_id, n in counts.items():
        if n > 1:
            # Which of the copies is right is unknowable: take none of them.
            errors.append(SpecError(user_id, f"appears {n} times in the desired state"))
    for spec in snapshot.users:
        if counts[spec.user_id] > 1:
            continue
        try:
            users.append(user_from_wire(spec))
        except SpecError as e:
            errors.append(e)
    return DesiredState(revision=snapshot.revision, users=tuple(users)), errors


def desired_to_wire(state: DesiredState) -> v1.DesiredSnapshot:
    return v1.DesiredSnapshot(revision=state.revision, users=[user_to_wire(u) for u in state.users])
