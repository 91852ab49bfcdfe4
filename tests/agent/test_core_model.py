"""The agent's model: validation of the wire's DesiredSnapshot and the round trip."""

from __future__ import annotations

import base64

import pytest

from edgeward.agent.model import (
    DesiredState,
    DesiredUser,
    ProxyProtocol,
    SpecError,
    desired_from_wire,
    desired_from_wire_lenient,
    desired_to_wire,
    user_from_wire,
)
from edgeward.proto import v1

U1 = "11111111-1111-4111-8111-111111111111"
KEY = base64.b64encode(b"k" * 32).decode()


def cred(**kw) -> v1.ProxyCredential:
    base = dict(inbound_tag="vless-in", protocol=v1.Protocol.VLESS, email="a@x", secret=U1)
    base.update(kw)
    return v1.ProxyCredential(**base)


def spec(user_id="alice", proxies=None, wireguard=(), **kw) -> v1.UserSpec:
    return v1.UserSpec(
        user_id=user_id,
        proxies=[cred()] if proxies is None else list(proxies),
        wireguard=list(wireguard),
        **kw,
    )


def test_round_trip_keeps_everything():
    snapshot = v1.DesiredSnapshot(
        revision=42,
        users=[
            spec(
                "alice",
                [
                    cred(flow="xtls-rprx-vision"),
                    cred(inbound_tag="vmess-in", protocol=v1.Protocol.VMESS, email="a@vm"),
                    cred(inbound_tag="tj", protocol=v1.Protocol.TROJAN, email="a@tj", secret="pw"),
                    cred(
                        inbound_tag="ss",
                        protocol=v1.Protocol.SHADOWSOCKS,
                        email="a@ss",
                        secret="pw",
                        cipher="aes-256-gcm",
                    ),
                ],
                [v1.WireguardPeer(interface="wg0", public_key=KEY, allowed_ips=["10.0.0.2/32"])],
                expires_at_ms=123,
            ),
            spec("bob", [], suspended=True, suspended_reason=v1.Reason.QUOTA),
        ],
    )
    state = desired_from_wire(snapshot)
    assert state.revision == 42
    alice = state.user("alice")
    assert alice is not None
    assert [p.protocol for p in alice.proxies] == [
        ProxyProtocol.VLESS,
        ProxyProtocol.VMESS,
        ProxyProtocol.TROJAN,
        ProxyProtocol.SHADOWSOCKS,
    ]
    assert alice.proxies[0].flow == "xtls-rprx-vision"
    assert alice.wireguard[0].allowed_ips == ("10.0.0.2/32",)
    assert state.user("bob").suspended_reason == int(v1.Reason.QUOTA)
    # Through bytes and back: equal state.
    again = desired_from_wire(v1.DesiredSnapshot.parse(bytes(desired_to_wire(state))))
    assert again == state


def test_uuid_is_normalised():
    user = user_from_wire(spec(proxies=[cred(secret=U1.upper())]))
    assert user.proxies[0].secret == U1


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        (cred(secret="not-a-uuid"), "user 'alice': invalid UUID 'not-a-uuid'"),
        (cred(protocol=v1.Protocol.UNSPECIFIED), "user 'alice': unknown protocol"),
        (cred(email=""), "user 'alice': proxy credential on inbound 'vless-in' has an empty email"),
        (cred(inbound_tag=""), "user 'alice': proxy credential has an empty inbound tag"),
        (cred(secret=""), "user 'alice': proxy credential 'a@x' has an empty secret"),
        (
            cred(protocol=v1.Protocol.SHADOWSOCKS, secret="pw", cipher="rc4-md5"),
            "user 'alice': unknown Shadowsocks cipher 'rc4-md5'",
        ),
        (cred(protocol=v1.Protocol.TROJAN, secret="pw", flow="x"), "only valid for VLESS"),
    ],
)
def test_bad_credential_names_the_user(bad, text):
    with pytest.raises(SpecError) as info:
        user_from_wire(spec(proxies=[bad]))
    assert text in str(info.value)
    assert info.value.user_id == "alice"


@pytest.mark.parametrize(
    ("peer", "text"),
    [
        (v1.WireguardPeer(interface="wg0", public_key="zz"), "is not base64"),
        (v1.WireguardPeer(interface="wg0", public_key="YWJj"), "is not 32 bytes"),
        (
            v1.WireguardPeer(interface="wg0", public_key=KEY, allowed_ips=["10.0.0.1/24"]),
            "allowed IP '10.0.0.1/24'",
        ),
        (v1.WireguardPeer(interface="", public_key=KEY), "empty interface name"),
    ],
)
def test_bad_wireguard_peer_names_the_user(peer, text):
    with pytest.raises(SpecError, match="user 'alice'") as info:
        user_from_wire(spec(proxies=[], wireguard=[peer]))
    assert text in str(info.value)


def test_unknown_protocol_number_from_a_newer_central():
    # A protocol number this agent does not know arrives as a raw int on the wire.
    raw = bytes(spec(proxies=[cred()]))
    data = raw.replace(bytes([0x10, 0x01]), bytes([0x10, 0x09]), 1)  # field 2 (protocol) := 9
    parsed = v1.UserSpec.parse(data)
    with pytest.raises(SpecError, match=r"user 'alice': unknown protocol"):
        user_from_wire(parsed)


def test_strict_snapshot_rejects_whole_and_names_every_bad_user():
    snapshot = v1.DesiredSnapshot(
        revision=3,
        users=[
            spec("good"),
            spec("bad1", [cred(secret="nope", email="b1@x")]),
            spec("bad2", [cred(email="")]),
        ],
    )
    with pytest.raises(SpecError) as info:
        desired_from_wire(snapshot)
    text = str(info.value)
    assert "'bad1'" in text and "'bad2'" in text and "invalid UUID 'nope'" in text


def test_lenient_snapshot_keeps_good_users_and_reports_bad():
    snapshot = v1.DesiredSnapshot(
        revision=3,
        users=[spec("good"), spec("bad", [cred(secret="nope")]), spec("twice"), spec("twice")],
    )
    state, errors = desired_from_wire_lenient(snapshot)
    assert [u.user_id for u in state.users] == ["good"]
    assert sorted(e.user_id for e in errors) == ["bad", "twice"]
    assert any("appears 2 times" in str(e) for e in errors)


def test_duplicate_user_in_state_is_an_error():
    with pytest.raises(SpecError, match="'x': appears twice"):
        DesiredState(revision=1, users=(DesiredUser("x"), DesiredUser("x")))


def test_active_at_now():
    assert DesiredUser("u").is_active(10)
    assert DesiredUser("u", expires_at_ms=11).is_active(10)
    assert not DesiredUser("u", expires_at_ms=10).is_active(10)
    assert not DesiredUser("u", suspended=True).is_active(10)
