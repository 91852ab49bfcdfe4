"""Share links and WireGuard .conf files (pure), QR files, and `users links` output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from edgeward import links, qr
from edgeward.central.admin_records import ClientCredentials, NodeInbound, NodeRow
from edgeward.central.desired import Inbound
from edgeward.central.links_for_user import node_links
from edgeward.proto import v1

UUID = "5b8e3c0e-1111-4222-8333-444455556666"
TLS = links.Endpoint("vpn.example.com", 443, security="tls", sni="cdn.example.com",
                     fingerprint="chrome")  # fmt: skip


def test_vless_link_carries_transport_and_tls_and_reads_back():
    ws = links.Endpoint("vpn.example.com", 443, network="ws", security="tls", sni="a.example",
                        path="/ray", ws_host="a.example", flow="")  # fmt: skip
    uri = links.vless_link(UUID, ws, "alice@n1")
    assert uri.startswith(f"vless://{UUID}@vpn.example.com:443?")
    parsed = links.parse_link(uri)
    assert (parsed.scheme, parsed.secret, parsed.host, parsed.port, parsed.name) == (
        "vless", UUID, "vpn.example.com", 443, "alice@n1",
    )  # fmt: skip
    assert parsed.params == {"encryption": "none", "type": "ws", "security": "tls",
                             "sni": "a.example", "path": "/ray", "host": "a.example"}  # fmt: skip
    outbound = links.v2ray_outbound(parsed)
    assert outbound["settings"]["vnext"][0]["users"] == [{"id": UUID, "encryption": "none"}]
    assert outbound["streamSettings"]["wsSettings"]["path"] == "/ray"


def test_reality_and_flow_parameters():
    ep = links.Endpoint("1.2.3.4", 443, security="reality", sni="www.example.com",
                        public_key="pbkpbk", short_id="ab12", fingerprint="chrome",
                        flow="xtls-rprx-vision")  # fmt: skip
    params = links.parse_link(links.vless_link(UUID, ep, "x")).params
    assert params["pbk"] == "pbkpbk" and params["sid"] == "ab12"
    assert params["flow"] == "xtls-rprx-vision" and params["fp"] == "chrome"


def test_vmess_link_is_base64_json_in_v2rayn_form():
    uri = links.vmess_link(UUID, TLS, "bob")
    body = json.loads(base64.b64decode(uri.removeprefix("vmess://")))
    assert body["v"] == "2" and body["id"] == UUID and body["aid"] == "0"
    assert (body["add"], body["port"], body["tls"], body["sni"]) == (
        "vpn.example.com", "443", "tls", "cdn.example.com",
    )  # fmt: skip
    parsed = links.parse_link(uri)
    assert (parsed.scheme, parsed.secret, parsed.name) == ("vmess", UUID, "bob")


def test_trojan_and_shadowsocks_links_escape_secrets():
    password = "p@ss/w:rd+"
    trojan = links.parse_link(links.trojan_link(password, TLS, "carol"))
    assert (trojan.secret, trojan.params["security"], trojan.params["sni"]) == (
        password, "tls", "cdn.example.com",
    )  # fmt: skip
    ss = links.parse_link(links.shadowsocks_link("aes-256-gcm", password, TLS, "c"))
    assert (ss.secret, ss.params["method"]) == (password, "aes-256-gcm")


def test_ipv6_hosts_are_bracketed():
    ep = links.Endpoint("2001:db8::1", 8443)
    uri = links.trojan_link("pw", ep, "v6")
    assert "@[2001:db8::1]:8443?" in uri
    assert links.parse_link(uri).host == "2001:db8::1"
    conf = links.wireguard_conf(private_key="k", address="10.66.0.1/32", preshared_key="p",
                                server_public_key="s", host="2001:db8::1", port=51820)  # fmt: skip
    assert "Endpoint = [2001:db8::1]:51820" in conf


def test_bad_links_are_refused_with_the_reason():
    for bad, why in [("http://x", "not a share link"), ("vless://host-only", "needs SECRET@HOST"),
                     ("vmess://not-json!!", "not v2rayN JSON")]:  # fmt: skip
        with pytest.raises(links.LinkError, match=why):
            links.parse_link(bad)


def test_strip_wg_quick_keeps_only_what_wg_setconf_reads():
    conf = links.wireguard_conf(private_key="priv", address="10.66.0.5/32", preshared_key="psk",
                                server_public_key="pub", host="vpn.example.com", port=51820,
                                dns="1.1.1.1")  # fmt: skip
    assert "Address = 10.66.0.5/32" in conf and "DNS = 1.1.1.1" in conf
    stripped = links.strip_wg_quick(conf)
    assert "Address" not in stripped and "DNS" not in stripped
    assert "PrivateKey = priv" in stripped and "Endpoint = vpn.example.com:51820" in stripped


def test_subscription_body_is_base64_of_one_link_a_line():
    body = links.subscription_body(["vless://a", "trojan://b"])
    assert base64.b64decode(body).decode().splitlines() == ["vless://a", "trojan://b"]


def test_node_links_skip_inbounds_clients_cannot_reach():
    creds = ClientCredentials("alice", UUID, "pw", "priv", "psk", "10.66.0.1/32")
    inbounds = (
        NodeInbound(Inbound("vless-in", v1.Engine.PROXY, v1.Protocol.VLESS), 443),
        NodeInbound(Inbound("internal", v1.Engine.PROXY, v1.Protocol.TROJAN), 0),
        NodeInbound(Inbound("ss22", v1.Engine.PROXY, v1.Protocol.SHADOWSOCKS_2022,
                            cipher="2022-blake3-aes-128-gcm"), 8388),
        NodeInbound(Inbound("ss", v1.Engine.PROXY, v1.Protocol.SHADOWSOCKS,
                            cipher="aes-128-gcm"), 8389),
    )  # fmt: skip
    node = NodeRow("n1", "vpn.example.com", inbounds, 1, 0, 0, 0, 0, 1)
    assert [link.inbound_tag for link in node_links(creds, node)] == ["vless-in", "ss"]
    no_address = NodeRow("n1", "", inbounds, 1, 0, 0, 0, 0, 1)
    assert node_links(creds, no_address) == []


def test_qr_codes_in_the_terminal_and_as_png_and_svg(tmp_path: Path):
    text = links.vless_link(UUID, TLS, "alice")
    art = qr.terminal(text)
    lines = art.splitlines()
    modules = qr.make(text).symbol_size(scale=1, border=0)[0]
    assert len(lines) == (modules + 4 + 1) // 2  # two module rows a line, border 2
    assert qr.save(text, tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in qr.save(text, tmp_path / "a.svg").read_text()
    with pytest.raises(ValueError, match=r"must end in \.png or \.svg"):
        qr.save(text, tmp_path / "a.gif")
