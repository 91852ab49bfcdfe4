"""Flavors on the wire: what the agent encodes, decoded by Xray-core's own classes.

No Xray binary exists here; python-xray-api carries protoc-generated classes of
Xray-core's protos, so the xray flavor is checked against them: paths from the
service descriptors, type strings from the message descriptors, field values
from decoding our bytes. The v2fly flavor is checked on the real core in
test_core_driver.py.
"""

from __future__ import annotations

import pytest
from xray.app.proxyman.command import command_pb2 as xcmd
from xray.app.stats.command import command_pb2 as xstats
from xray.common.protocol import headers_pb2 as xheaders
from xray.common.protocol import user_pb2 as xuser
from xray.proxy.shadowsocks import config_pb2 as xss
from xray.proxy.shadowsocks_2022 import config_pb2 as xss22
from xray.proxy.trojan import config_pb2 as xtrojan
from xray.proxy.vless import account_pb2 as xvless
from xray.proxy.vmess import account_pb2 as xvmess

from edgeward.agent.core_flavor import V2FLY, XRAY, UnsupportedByFlavor, flavor_by_name
from edgeward.agent.model import ProxyProtocol, ProxyUser
from edgeward.proto import core

U1 = "11111111-1111-4111-8111-111111111111"


def xray_path(module, service: str, method: str) -> str:
    svc = module.DESCRIPTOR.services_by_name[service]
    return f"/{svc.full_name}/{svc.methods_by_name[method].name}"


@pytest.mark.parametrize(
    ("ours", "module", "service", "method"),
    [
        (XRAY.handler_path("AlterInbound"), xcmd, "HandlerService", "AlterInbound"),
        (XRAY.handler_path("GetInboundUsers"), xcmd, "HandlerService", "GetInboundUsers"),
        (
            XRAY.handler_path("GetInboundUsersCount"),
            xcmd,
            "HandlerService",
            "GetInboundUsersCount",
        ),
        (XRAY.handler_path("ListInbounds"), xcmd, "HandlerService", "ListInbounds"),
        (XRAY.stats_path("QueryStats"), xstats, "StatsService", "QueryStats"),
        (XRAY.stats_path("GetSysStats"), xstats, "StatsService", "GetSysStats"),
    ],
)
def test_xray_paths_match_xray_service_descriptors(ours, module, service, method):
    assert ours == xray_path(module, service, method)


def test_v2fly_paths_and_type_strings():
    assert (
        V2FLY.handler_path("AlterInbound")
        == "/v2ray.core.app.proxyman.command.HandlerService/AlterInbound"
    )
    assert V2FLY.stats_path("QueryStats") == "/v2ray.core.app.stats.command.StatsService/QueryStats"
    assert V2FLY.type_name("proxy.vless.Account") == "v2ray.core.proxy.vless.Account"


def decode_add(request: core.AlterInboundRequest):
    """Our AlterInbound bytes through Xray's classes: (request, operation, user)."""
    x = xcmd.AlterInboundRequest.FromString(bytes(request))
    assert x.operation.type == xcmd.AddUserOperation.DESCRIPTOR.full_name
    op = xcmd.AddUserOperation.FromString(x.operation.value)
    assert isinstance(op.user, xuser.User)
    return x, op.user


@pytest.mark.parametrize(
    ("user", "account_cls", "fields"),
    [
        (
            ProxyUser("vl", ProxyProtocol.VLESS, "a@x", U1, flow="xtls-rprx-vision"),
            xvless.Account,
            {"id": U1, "flow": "xtls-rprx-vision", "encryption": ""},
        ),
        (
            ProxyUser("vm", ProxyProtocol.VMESS, "a@x", U1),
            xvmess.Account,
            {"id": U1, "security_settings.type": xheaders.SecurityType.Value("AUTO")},
        ),
        (
            ProxyUser("tj", ProxyProtocol.TROJAN, "a@x", "secret-pw"),
            xtrojan.Account,
            {"password": "secret-pw"},
        ),
        (
            ProxyUser("ss", ProxyProtocol.SHADOWSOCKS, "a@x", "pw", cipher="chacha20-poly1305"),
            xss.Account,
            {"password": "pw", "cipher_type": xss.CipherType.Value("CHACHA20_POLY1305")},
        ),
        (
            ProxyUser("ss", ProxyProtocol.SHADOWSOCKS, "a@x", "pw", cipher="xchacha20-poly1305"),
            xss.Account,
            {"cipher_type": xss.CipherType.Value("XCHACHA20_POLY1305")},
        ),
        (
            ProxyUser("s2", ProxyProtocol.SHADOWSOCKS_2022, "a@x", "base64key=="),
            xss22.Account,
            {"key": "base64key=="},
        ),
    ],
)
def test_xray_add_user_decodes_with_xray_classes(user, account_cls, fields):
    x, xu = decode_add(XRAY.add_user_request(user))
    assert x.tag == user.inbound_tag
    assert xu.email == user.email
    assert xu.account.type == account_cls.DESCRIPTOR.full_name
    account = account_cls.FromString(xu.account.value)
    for path, want in fields.items():
        value = account
        for part in path.split("."):
            value = getattr(value, part)
        assert value == want, path
    # And back: decoding what the core would list gives the same user.
    listed = XRAY.decode_account(
        user.inbound_tag, xu.email, core.TypedMessage(type=xu.account.type, value=xu.account.value)
    )
    assert listed == user


def test_every_xray_cipher_number_matches_xray_enum():
    names = {
        "aes-128-gcm": "AES_128_GCM",
        "aes-256-gcm": "AES_256_GCM",
        "chacha20-poly1305": "CHACHA20_POLY1305",
        "xchacha20-poly1305": "XCHACHA20_POLY1305",
    }
    assert XRAY.ciphers == {ours: xss.CipherType.Value(x) for ours, x in names.items()}


def test_xray_remove_user_decodes_with_xray_classes():
    x = xcmd.AlterInboundRequest.FromString(bytes(XRAY.remove_user_request("vl", "a@x")))
    assert x.tag == "vl"
    assert x.operation.type == xcmd.RemoveUserOperation.DESCRIPTOR.full_name
    assert xcmd.RemoveUserOperation.FromString(x.operation.value).email == "a@x"


def test_xray_listing_messages_round_trip():
    # What an Xray core answers to GetInboundUsers, encoded by Xray's classes,
    # parses with our neutral messages.
    account = xvless.Account(id=U1, flow="xtls-rprx-vision")
    reply = xcmd.GetInboundUserResponse(
        users=[
            xuser.User(
                email="a@x",
                account={"type": "xray.proxy.vless.Account", "value": account.SerializeToString()},
            )
        ]
    )
    ours = core.GetInboundUserResponse.parse(reply.SerializeToString())
    (u,) = ours.users
    assert XRAY.decode_account("vl", u.email, u.account) == ProxyUser(
        "vl", ProxyProtocol.VLESS, "a@x", U1, "xtls-rprx-vision"
    )
    request = xcmd.GetInboundUserRequest.FromString(
        bytes(core.GetInboundUserRequest(tag="vl", email="a@x"))
    )
    assert (request.tag, request.email) == ("vl", "a@x")
    count = core.GetInboundUsersCountResponse.parse(
        xcmd.GetInboundUsersCountResponse(count=12345).SerializeToString()
    )
    assert count.count == 12345
    sys_stats = core.SysStatsResponse.parse(xstats.SysStatsResponse(Uptime=77).SerializeToString())
    assert sys_stats.uptime == 77


def test_v2fly_refuses_runtime_shadowsocks():
    with pytest.raises(UnsupportedByFlavor, match="v2fly cannot add shadowsocks users"):
        V2FLY.add_user_request(
            ProxyUser("ss", ProxyProtocol.SHADOWSOCKS, "a@x", "pw", "", "aes-128-gcm")
        )


def test_unknown_flavor_is_a_clear_error():
    with pytest.raises(
        ValueError, match="unknown core flavor 'sing-box'; expected one of v2fly, xray"
    ):
        flavor_by_name("sing-box")


FAST_CASES = [
    ProxyUser("vl", ProxyProtocol.VLESS, "a@x", U1),
    ProxyUser("vl", ProxyProtocol.VLESS, "ünïcode-" + "e" * 300, U1, flow="xtls-rprx-vision"),
    ProxyUser("vm", ProxyProtocol.VMESS, "b@x", U1),
    ProxyUser("tj", ProxyProtocol.TROJAN, "c@x", "p" * 200),
    ProxyUser("ss", ProxyProtocol.SHADOWSOCKS, "d@x", "pw", cipher="aes-128-gcm"),
    ProxyUser("s2", ProxyProtocol.SHADOWSOCKS_2022, "e@x", "a2V5"),
]


@pytest.mark.parametrize("flavor", [XRAY, V2FLY], ids=["xray", "v2fly"])
@pytest.mark.parametrize("user", FAST_CASES, ids=lambda u: f"{u.protocol.value}-{len(u.email)}")
def test_fast_encoding_is_byte_identical_to_the_messages(flavor, user):
    try:
        expected = bytes(flavor.add_user_request(user))
    except UnsupportedByFlavor:
        with pytest.raises(UnsupportedByFlavor):
            flavor.add_user_bytes(user)
        return
    assert flavor.add_user_bytes(user) == expected
    assert flavor.remove_user_bytes(user.inbound_tag, user.email) == bytes(
        flavor.remove_user_request(user.inbound_tag, user.email)
    )
