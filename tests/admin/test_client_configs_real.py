"""Generated client configs used by real clients: a vless:// link parsed into a real v2ray
client moves bytes through a real v2ray server; the subscription URL serves the links."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgeward import links
from tests.admin.fleet import ConnectedNode, running_fleet
from tests.central.backends import StorageBackend
from tests.support.ports import free_port, wait_listening
from tests.support.rawcore import raw_add_vless
from tests.support.v2ray import (
    BlobServer,
    FetchFailed,
    V2rayCore,
    _kill,
    _start_v2ray,
    fetch_through,
)

from .test_cli_nodes import hello


def client_config_from_link(uri: str, socks_port: int) -> dict:
    """What a client app does with a share link: a socks inbound, the link's outbound."""
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [{"tag": "socks", "listen": "127.0.0.1", "port": socks_port,
                      "protocol": "socks", "settings": {"udp": False}}],
        "outbounds": [links.v2ray_outbound(links.parse_link(uri))],
    }  # fmt: skip


def test_a_vless_link_from_the_cli_downloads_through_a_real_core(
    tmp_path: Path,
    storage_backend: StorageBackend,
    v2ray_core: V2rayCore,
    http_blob_server: BlobServer,
):
    with running_fleet(tmp_path / "fleet", storage_backend) as fleet:
        port = v2ray_core.ports["vless-in"]
        fleet.ok("nodes", "add", "n1", "--address", "127.0.0.1",
                 "--inbound", f"tag=vless-in,protocol=vless,port={port}")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "n1")
        # The node's desired state names the credential; applying it to the core is the
        # agent's job, done here with a raw API call.
        with ConnectedNode(fleet, "n1", hello()) as node:
            snapshot = node.messages[1][1]
        [spec] = snapshot.users
        [proxy] = spec.proxies
        raw_add_vless(v2ray_core.api_port, proxy.inbound_tag, proxy.email, proxy.secret)

        config = fleet.json("users", "links", "alice", "--node", "n1", role="operator")
        [link] = config["links"]
        assert link["uri"].startswith(f"vless://{proxy.secret}@127.0.0.1:{port}?")
        socks = free_port()
        client = _start_v2ray(client_config_from_link(link["uri"], socks), tmp_path, "client")
        try:
            wait_listening(socks)
            assert fetch_through(socks, http_blob_server.url(1_000_000)) == 1_000_000
            # A link of a user the core does not know carries nothing (the test can fail).
            fleet.ok("users", "reissue", "alice")
            fresh = fleet.json("users", "links", "alice", role="operator")["links"][0]["uri"]
            socks2 = free_port()
            stranger = _start_v2ray(client_config_from_link(fresh, socks2), tmp_path, "client2")
            try:
                wait_listening(socks2)
                with pytest.raises(FetchFailed):
                    fetch_through(socks2, http_blob_server.url(1000), timeout=3)
            finally:
                _kill(stranger)
        finally:
            _kill(client)


def get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def test_subscription_url_serves_the_links_and_is_revocable(
    tmp_path: Path, storage_backend: StorageBackend
):
    with running_fleet(tmp_path, storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", "vpn1.example.com",
                 "--inbound", "tag=vless-in,protocol=vless,port=443,security=tls",
                 "--inbound", "tag=trojan-in,protocol=trojan,port=8443")  # fmt: skip
        fleet.ok("nodes", "add", "n2", "--address", "vpn2.example.com",
                 "--inbound", "tag=vmess-in,protocol=vmess,port=443")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "n1", "--node", "n2", "--data-limit", "1G",
                 "--expires", "2099-01-01")  # fmt: skip
        config = fleet.json("users", "links", "alice", role="operator")
        url = config["subscription_url"]
        assert url.startswith(f"http://127.0.0.1:{fleet.subscription_port}/sub/")
        status, headers, body = get(url)
        assert status == 200
        served = base64.b64decode(body).decode().splitlines()
        assert served == [link["uri"] for link in config["links"]]
        assert [links.parse_link(u).scheme for u in served] == ["trojan", "vless", "vmess"]
        assert headers["Subscription-Userinfo"] == (
            "upload=0; download=0; total=1000000000; expire=4070908800"
        )
        assert get(url, "HEAD")[:2][0] == 200 and get(url, "HEAD")[2] == b""
        assert get(url, "POST")[0] == 405
        # The same URL again: a stable token until rotated.
        assert fleet.json("users", "subscription", "alice", role="operator")[
            "subscription_url"] == url  # fmt: skip

        rotated = fleet.json("users", "subscription", "alice", "--rotate", role="operator")
        assert rotated["subscription_url"] != url
        assert get(url)[0] == 404
        assert get(rotated["subscription_url"])[0] == 200
        fleet.ok("users", "subscription", "alice", "--revoke", role="operator")
        assert get(rotated["subscription_url"])[0] == 404
        assert get(f"http://127.0.0.1:{fleet.subscription_port}/sub/x")[0] == 404
        assert get(f"http://127.0.0.1:{fleet.subscription_port}/")[0] == 404


def test_links_written_as_files_with_qr_codes(tmp_path: Path, storage_backend: StorageBackend):
    with running_fleet(tmp_path / "fleet", storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", "vpn1.example.com",
                 "--inbound", "tag=vless-in,protocol=vless,port=443",
                 "--inbound", "tag=wg0,protocol=wireguard,port=51820,"
                              "public_key=" + "A" * 43 + "=,dns=1.1.1.1")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "n1")
        out = tmp_path / "out"
        result = fleet.json("users", "links", "alice", "--out", str(out), "--qr-format", "svg",
                            role="operator")  # fmt: skip
        assert sorted(Path(f).name for f in result["files"]) == [
            "n1-vless-in.svg", "n1-vless-in.txt", "n1-wg0.conf", "n1-wg0.svg",
        ]  # fmt: skip
        conf = (out / "n1-wg0.conf").read_text()
        assert "Endpoint = vpn1.example.com:51820" in conf and "DNS = 1.1.1.1" in conf
        assert (out / "n1-wg0.conf").stat().st_mode & 0o077 == 0
        text = fleet.ok("users", "links", "alice", "--qr", role="operator").stdout
        assert "vless://" in text and "[Interface]" in text and "█" in text
        assert json.loads(fleet.ok("users", "links", "alice", "--json", role="operator").stdout)
        refused = fleet.cli("users", "links", "alice", "--node", "n9", role="operator")
        assert refused.exit_code == 3 and "unknown node 'n9'" in refused.output
