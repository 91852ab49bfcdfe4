"""Pure parts of the WireGuard driver: validation, the UAPI text protocol,
netlink request building and dump merging. The same contracts run against
real wireguard-go (test_wireguard_uapi.py) and real kernel WireGuard
(test_wireguard_kernel.py, in the QEMU VM)."""

from __future__ import annotations

import base64

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from edgeward.agent.wg_netlink import (
    ALLOWED_IPS_PER_REQUEST,
    fragments_of,
    merge_peer_fragments,
    peer_requests,
)
from edgeward.agent.wg_uapi import format_remove, format_upsert, parse_get, response_errno
from edgeward.agent.wireguard import (
    InvalidPeerError,
    PeerConfig,
    PeerState,
    WireGuard,
    WireGuardError,
    uapi_socket_path,
    validate_peer,
)

KEY1 = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(32, 64))).decode()
PSK = base64.b64encode(b"\x07" * 32).decode()


def test_validate_normalises_allowed_ips_and_keeps_the_rest():
    peer = PeerConfig(KEY1, ("fd00:0::/64", "10.0.0.0/8"), PSK, 25, "[fd00::1]:51820")
    assert validate_peer(peer) == PeerConfig(
        KEY1, ("fd00::/64", "10.0.0.0/8"), PSK, 25, "[fd00::1]:51820"
    )


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        (PeerConfig("!!", ()), "public key '!!' is not valid base64"),
        (PeerConfig(KEY1[:-4], ()), "decodes to 30 bytes, expected 32"),
        (PeerConfig(KEY1, "10.0.0.0/8"), "a sequence of CIDRs, not one string"),
        (PeerConfig(KEY1, ("10.0.0.0/33",)), "is not a valid network"),
        (PeerConfig(KEY1, ("10.0.0.1/8",)), "has host bits set"),
        (PeerConfig(KEY1, (), endpoint="example.org:51820"), "must be an IP address"),
        (PeerConfig(KEY1, (), endpoint="[fd00::1:51820"), "unclosed IPv6 bracket"),
        (PeerConfig(KEY1, (), endpoint="192.0.2.1:0"), "host:port"),
        (PeerConfig(KEY1, (), persistent_keepalive=-1), "0..65535"),
    ],
)
def test_validate_refuses_bad_peers_clearly(peer, message):
    with pytest.raises(InvalidPeerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_peer(peer)


def test_interface_names_cannot_escape_the_socket_dir():
    assert uapi_socket_path("wg0") == "/var/run/wireguard/wg0.sock"
    for bad in ("", "../etc", "a" * 16, ".."):
        with pytest.raises(WireGuardError, match="invalid interface name"):
            uapi_socket_path(bad)


def test_backend_follows_the_uapi_socket_like_wg8(tmp_path):
    wg = WireGuard(socket_dir=str(tmp_path))
    assert wg.backend_for("wg7").name == "netlink"
    (tmp_path / "wg7.sock").touch()
    assert wg.backend_for("wg7").name == "uapi"


def test_uapi_upsert_is_one_peer_in_hex_replacing_everything():
    text = format_upsert(PeerConfig(KEY1, ("10.0.0.0/24", "fd00::/64"), None, 0, "192.0.2.2:51821"))
    assert text == (
        "set=1\n"
        f"public_key={bytes(range(32)).hex()}\n"
        "replace_allowed_ips=true\n"
        f"preshared_key={'0' * 64}\n"
        "persistent_keepalive_interval=0\n"
        "endpoint=192.0.2.2:51821\n"
        "allowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n\n"
    )
    assert f"preshared_key={'07' * 32}\n" in format_upsert(PeerConfig(KEY1, (), PSK))
    assert format_remove(KEY2) == f"set=1\npublic_key={bytes(range(32, 64)).hex()}\nremove=true\n\n"


def test_uapi_get_parses_every_peer_and_repeated_allowed_ips():
    answer = (
        f"private_key={'11' * 32}\nlisten_port=51820\n"
        f"public_key={bytes(range(32)).hex()}\npreshared_key={'07' * 32}\n"
        "endpoint=192.0.2.2:51821\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=500000000\ntx_bytes=1234\nrx_bytes=5678\n"
        "persistent_keepalive_interval=0\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\n"
        f"public_key={bytes(range(32, 64)).hex()}\npreshared_key={'0' * 64}\n"
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
        "protocol_version=1\nerrno=0\n\n"
    )
    device, peers = parse_get(answer)
    assert device == {"private_key": "11" * 32, "listen_port": "51820"}
    assert peers == [
        PeerState(KEY1, ("10.0.0.0/24", "fd00::/64"), True, 5678, 1234, 1700000000.5),
        PeerState(KEY2, (), False, 0, 0, None),
    ]
    assert response_errno(answer) == 0
    assert response_errno("errno=-22\n\n") == -22
    with pytest.raises(WireGuardError, match="without errno"):
        response_errno("listen_port=1\n\n")


def test_netlink_requests_split_big_allowed_ip_sets():
    ips = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(2 * ALLOWED_IPS_PER_REQUEST + 5))
    first, second, third = peer_requests(PeerConfig(KEY1, ips, PSK, 5, "[fd00::2]:51821"))
    assert first["replace_allowed_ips"] and first["preshared_key"] == PSK
    assert (first["endpoint_addr"], first["endpoint_port"]) == ("fd00::2", 51821)
    assert second["update_only"] and third["update_only"]
    assert "replace_allowed_ips" not in second and "preshared_key" not in second
    assert first["allowed_ips"] + second["allowed_ips"] + third["allowed_ips"] == list(ips)
    (only,) = peer_requests(PeerConfig(KEY1, ()))
    assert only["preshared_key"] == "A" * 43 + "=" and only["allowed_ips"] == []


def encoded_dump_message(peers: list[dict]) -> wgmsg:
    """A dump message as the kernel sends it, through pyroute2's own codec."""
    msg = wgmsg()
    msg["cmd"], msg["version"] = 0, 1
    msg["header"]["type"] = 30
    msg["attrs"].append(["WGDEVICE_A_IFINDEX", 9])
    attrs = []
    for peer in peers:
        nla = [["WGPEER_A_PUBLIC_KEY", peer["key"].encode()]]
        if "rx" in peer:
            nla += [
                ["WGPEER_A_PRESHARED_KEY", peer["psk"].encode()],
                ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": peer["hs"], "tv_nsec": 0}],
                ["WGPEER_A_RX_BYTES", peer["rx"]],
                ["WGPEER_A_TX_BYTES", peer["tx"]],
            ]
        allowed = [
            {"attrs": [["WGALLOWEDIP_A_FAMILY", 2],
                       ["WGALLOWEDIP_A_IPADDR", bytes([10, 0, n, 0])],
                       ["WGALLOWEDIP_A_CIDR_MASK", 24]]}
            for n in peer["nets"]
        ]  # fmt: skip
        nla.append(["WGPEER_A_ALLOWEDIPS", allowed])
        attrs.append({"attrs": nla})
    msg["attrs"].append(["WGDEVICE_A_PEERS", attrs])
    msg.encode()
    decoded = wgmsg(msg.data)
    decoded.decode()
    return decoded


def test_a_peer_split_across_dump_messages_is_merged():
    zero = "A" * 43 + "="
    messages = [
        encoded_dump_message(
            [
                {"key": KEY2, "psk": zero, "hs": 0, "rx": 0, "tx": 0, "nets": [9]},
                {"key": KEY1, "psk": PSK, "hs": 1700000000, "rx": 10, "tx": 20, "nets": [1, 2]},
            ]
        ),
        # the continuation: the same key first, allowed IPs only
        encoded_dump_message([{"key": KEY1, "nets": [3, 4]}]),
    ]
    assert merge_peer_fragments(fragments_of(messages)) == [
        PeerState(KEY2, ("10.0.9.0/24",), False, 0, 0, None),
        PeerState(
            KEY1,
            ("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24"),
            True,
            10,
            20,
            1700000000.0,
        ),
    ]
