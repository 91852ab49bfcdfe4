"""The v2ray fixture is a real core: users added through its API move real bytes."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.rawcore import raw_add_vless, raw_query_stats, raw_uptime
from tests.support.v2ray import FetchFailed, fetch_through, open_client


def test_real_download_moves_the_users_downlink_counter(v2ray_core, http_blob_server, tmp_path):
    user_id = str(uuid.uuid4())
    email = "alice@fixture"
    raw_add_vless(v2ray_core.api_port, "vless-in", email, user_id)
    size = 3 * 1024 * 1024

    with open_client(tmp_path, v2ray_core, "vless", user_id) as client:
        received = fetch_through(client.socks_port, http_blob_server.url(size))

    assert received == size
    stats = raw_query_stats(v2ray_core.api_port, f"user>>>{email}>>>")
    assert stats[f"user>>>{email}>>>traffic>>>downlink"] >= size


def test_unknown_user_cannot_download(v2ray_core, http_blob_server, tmp_path):
    with (
        open_client(tmp_path, v2ray_core, "vless", str(uuid.uuid4())) as client,
        pytest.raises(FetchFailed),
    ):
        fetch_through(client.socks_port, http_blob_server.url(1024), timeout=5)


def test_restart_forgets_api_users_and_resets_uptime(v2ray_core, http_blob_server, tmp_path):
    user_id = str(uuid.uuid4())
    raw_add_vless(v2ray_core.api_port, "vless-in", "bob@fixture", user_id)
    old_pid = v2ray_core.pid
    restarted_at = time.monotonic()

    v2ray_core.restart()

    assert v2ray_core.pid != old_pid
    # a new process: its uptime counts from the restart, not from the first start
    assert raw_uptime(v2ray_core.api_port) <= time.monotonic() - restarted_at + 1
    with (
        open_client(tmp_path, v2ray_core, "vless", user_id) as client,
        pytest.raises(FetchFailed),
    ):
        fetch_through(client.socks_port, http_blob_server.url(1024), timeout=5)
