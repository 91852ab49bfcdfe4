"""Client configurations (pure): share links and WireGuard .conf files.

Formats, as the common clients read them (v2rayN, v2rayNG, Nekoray, Shadowrocket,
Hiddify, sing-box importers):
- vless://UUID@HOST:PORT?type=..&security=..&encryption=none[&flow&sni&fp&pbk&sid&path
  &host&serviceName]#NAME  (Xray's share-link proposal)
- vmess://BASE64(JSON)  with the v2rayN fields v, ps, add, port, id, aid, scy, net,
  type, host, path, tls, sni, fp
- trojan://PASSWORD@HOST:PORT?type=..&security=..[&sni..]#NAME
- ss://BASE64URL(METHOD:PASSWORD)@HOST:PORT#NAME  (SIP002)
- a wg-quick .conf; `strip_wg_quick` drops the wg-quick-only keys (Address, DNS...)
  the way `wg-quick strip` does, giving what `wg setconf` accepts.

`parse_link` reads the proxy links back (tests, `edgeward` checks), and
`v2ray_outbound` turns a parsed link into a v2ray/Xray client outbound.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

SCHEMES = ("vless", "vmess", "trojan", "ss")
WG_QUICK_ONLY = ("address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown",
                 "saveconfig")  # fmt: skip


class LinkError(ValueError):
    """A share link that cannot be read."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client connects to one inbound of a node."""

    host: str
    port: int
    network: str = "tcp"
    security: str = "none"
    sni: str = ""
    path: str = ""
    ws_host: str = ""
    public_key: str = ""  # REALITY
    short_id: str = ""
    fingerprint: str = ""
    flow: str = ""


@dataclass(frozen=True)
class ParsedLink:
    scheme: str
    secret: str  # UUID or password
    host: str
    port: int
    name: str
    params: dict[str, str] = field(default_factory=dict)


def _host_for_uri(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def _transport_query(ep: Endpoint) -> dict[str, str]:
    query = {"type": ep.network, "security": ep.security}
    if ep.security in ("tls", "reality"):
        if ep.sni:
            query["sni"] = ep.sni
        if ep.fingerprint:
            query["fp"] = ep.fingerprint
    if ep.security == "reality":
        query["pbk"] = ep.public_key
        if ep.short_id:
            query["sid"] = ep.short_id
    if ep.network in ("ws", "httpupgrade"):
        if ep.path:
            query["path"] = ep.path
        if ep.ws_host:
            query["host"] = ep.ws_host
    if ep.network == "grpc" and ep.path:
        query["serviceName"] = ep.path
    return query


def vless_link(uuid: str, ep: Endpoint, name: str) -> str:
    query = {"encryption": "none", **_transport_query(ep)}
    if ep.flow:
        query["flow"] = ep.flow
    return f"vless://{uuid}@{_host_for_uri(ep.host)}:{ep.port}?{urlencode(query)}#{quote(name)}"


def trojan_link(password: str, ep: Endpoint, name: str) -> str:
    query = urlencode(_transport_query(ep))
    where = f"{_host_for_uri(ep.host)}:{ep.port}"
    return f"trojan://{quote(password, safe='')}@{where}?{query}#{quote(name)}"


def vmess_link(uuid: str, ep: Endpoint, name: str) -> str:
    body = {
        "v": "2", "ps": name, "add": ep.host, "port": str(ep.port), "id": uuid, "aid": "0",
        "scy": "auto", "net": ep.network, "type": "none", "host": ep.ws_host,
        "path": ep.path, "tls": "tls" if ep.security == "tls" else "", "sni": ep.sni,
        "fp": ep.fingerprint,
    }  # fmt: skip
    return "vmess://" + base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def shadowsocks_link(method: str, password: str, ep: Endpoint, name: str) -> str:
    userinfo = base64.urlsafe_b64encode(f"{method}:{password}".encode()).decode().rstrip("=")
    return f"ss://{userinfo}@{_host_for_uri(ep.host)}:{ep.port}#{quote(name)}"


def wireguard_conf(
    *,
    private_key: str,
    address: str,
    preshared_key: str,
    server_public_key: str,
    host: str,
    port: int,
    allowed_ips: str = "",
    dns: str = "",
    keepalive: int = 25,
    name: str = "",
) -> str:
    lines = []
    if name:
        lines.append(f"# {name}")
    lines += ["[Interface]", f"PrivateKey = {private_key}", f"Address = {address}"]
    if dns:
        lines.append(f"DNS = {dns}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {server_public_key}",
        f"PresharedKey = {preshared_key}",
        f"Endpoint = {_host_for_uri(host)}:{port}",
        f"AllowedIPs = {allowed_ips or '0.0.0.0/0, ::/0'}",
        f"PersistentKeepalive = {keepalive}",
    ]
    return "\n".join(lines) + "\n"


def strip_wg_quick(conf: str) -> str:
    """The .conf without wg-quick's own keys: what `wg setconf` accepts."""
    kept = []
    for line in conf.splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if "=" in line and key in WG_QUICK_ONLY:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def subscription_body(links: list[str]) -> bytes:
    """What subscription clients fetch: the links, one a line, base64 encoded."""
    return base64.b64encode("\n".join(links).encode())


# ---------------------------------------------------------------- reading links back


def _b64decode_loose(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError) as e:
        raise LinkError(f"bad base64 in link: {e}") from None


def parse_link(uri: str) -> ParsedLink:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise LinkError(f"not a share link ({', '.join(SCHEMES)}): {uri[:40]!r}")
    if scheme == "vmess":
        try:
            body = json.loads(_b64decode_loose(rest))
            body["id"], body["add"], int(body["port"])
        except (ValueError, KeyError, TypeError) as e:
            raise LinkError(f"vmess link body is not v2rayN JSON: {e!r}") from None
        params = {
            "type": body.get("net", "tcp"), "security": body.get("tls") or "none",
            "sni": body.get("sni", ""), "path": body.get("path", ""),
            "host": body.get("host", ""), "fp": body.get("fp", ""),
        }  # fmt: skip
        return ParsedLink(
            "vmess", body["id"], body["add"], int(body["port"]), body.get("ps", ""),
            {k: v for k, v in params.items() if v},
        )  # fmt: skip
    parts = urlsplit(uri)
    if parts.hostname is None or parts.port is None or not parts.username:
        raise LinkError(f"{scheme} link needs SECRET@HOST:PORT: {uri[:60]!r}")
    secret = unquote(parts.username)
    if scheme == "ss":
        method, _, password = _b64decode_loose(parts.username).decode().partition(":")
        return ParsedLink("ss", password, parts.hostname, parts.port, unquote(parts.fragment),
                          {"method": method})  # fmt: skip
    return ParsedLink(
        scheme, secret, parts.hostname, parts.port, unquote(parts.fragment),
        dict(parse_qsl(parts.query)),
    )  # fmt: skip


def v2ray_outbound(link: ParsedLink, tag: str = "proxy") -> dict:
    """A v2ray/Xray client outbound for the link (tcp/ws/grpc, none/tls)."""
    if link.scheme in ("vless", "vmess"):
        user: dict = {"id": link.secret}
        if link.scheme == "vless":
            user["encryption"] = link.params.get("encryption", "none")
            if link.params.get("flow"):
                user["flow"] = link.params["flow"]
        else:
            user.update(alterId=0, security="auto")
        settings: dict = {"vnext": [{"address": link.host, "port": link.port, "users": [user]}]}
    elif link.scheme == "trojan":
        settings = {"servers": [{"address": link.host, "port": link.port,
                                 "password": link.secret}]}  # fmt: skip
    else:
        server = {"address": link.host, "port": link.port}
        server.update(method=link.params["method"], password=link.secret)
        settings = {"servers": [server]}
        return {"tag": tag, "protocol": "shadowsocks", "settings": settings}
    network = link.params.get("type", "tcp")
    security = link.params.get("security", "none")
    stream: dict = {"network": network, "security": security}
    if security == "tls":
        stream["tlsSettings"] = {"serverName": link.params.get("sni", link.host)}
    if network == "ws":
        stream["wsSettings"] = {"path": link.params.get("path", "/"),
                                "headers": {"Host": link.params.get("host", "")}}  # fmt: skip
    if network == "grpc":
        stream["grpcSettings"] = {"serviceName": link.params.get("serviceName", "")}
    return {"tag": tag, "protocol": link.scheme, "settings": settings, "streamSettings": stream}
