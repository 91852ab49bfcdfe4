"""The daemon in-process on real parts: real central (thread, mTLS, SQLite), real v2ray,
real bytes through real clients; status and explain over the real control socket."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import pytest
import trio

from edgeward.agent.control import ask
from edgeward.agent.daemon import serve
from tests.e2e.agent_setup import (
    ADMIN,
    central_call,
    core_bytes,
    core_config,
    fetch_as,
    node_config,
    start_central,
    wait_for,
)


@pytest.fixture
def central(tmp_path: Path):
    central = start_central(tmp_path)
    try:
        yield central
    finally:
        central.stop()


async def user_total(central, user_id: str) -> int:
    user = await central_call(central, central.storage.get_user, user_id)
    return user.uplink_bytes + user.downlink_bytes


async def control(config, request):
    return await trio.to_thread.run_sync(ask, config.control_socket, request)


async def test_serves_central_users_on_the_real_core_and_central_counts_every_byte(
    tmp_path, central, v2ray_core, http_blob_server, caplog
):
    caplog.set_level(logging.INFO, "edgeward.central.stream")
    storage = central.storage
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    alice = await central_call(central, storage.get_user, "alice")
    config = core_config(node_config(tmp_path, central.pki, central.address), v2ray_core)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop))
        await wait_for(lambda: daemon.node.applied["proxy"].get("alice"), "alice in the core")
        got = await fetch_as(v2ray_core, tmp_path, alice.uuid, http_blob_server.url(300_000))
        assert got == 300_000
        counted = await core_bytes(v2ray_core, "alice")
        assert counted > 300_000

        async def central_has_it():
            return await user_total(central, "alice") == counted

        await wait_for(central_has_it, "central's total to reach the core's counters")
        status = (await control(config, {"command": "status"}))["status"]
        assert status["connection"] == "connected"
        assert (status["users_desired"], status["users_served"], status["users_applied"]) == (
            1, 1, 1,
        )  # fmt: skip
        assert status["epoch"] is not None and status["core_reachable"]
        explained = (await control(config, {"command": "explain", "user": "alice"}))["explain"]
        assert explained["served"] and explained["reason"] == "active"
        # The node told central what it applied (central logs the AppliedReport).
        await wait_for(
            lambda: (
                f"node node-a applied revision {daemon.node.revision}: 1/1 users" in caplog.text
            ),
            "the applied report",
        )
        assert explained["applied"]["proxy"] == ["trojan-in/alice", "vless-in/alice"]
        assert explained["last_usage_at_ms"] is not None
        # An admin suspension on central removes the user from the core.
        await central_call(central, storage.set_suspended, "alice", True, actor=ADMIN, why="t")
        await wait_for(lambda: not daemon.node.applied["proxy"].get("alice"), "alice removed")
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, http_blob_server.url(10)) is None
        explained = (await control(config, {"command": "explain", "user": "alice"}))["explain"]
        assert not explained["served"] and "admin" in explained["reason"]
        stop.set()


async def test_quota_crossed_by_real_traffic_removes_the_user_and_renewal_brings_them_back(
    tmp_path, central, v2ray_core, http_blob_server
):
    storage = central.storage
    limit = 500_000
    await central_call(
        central, storage.create_user, "alice", actor=ADMIN, data_limit_bytes=limit,
        node_ids=["node-a"],
    )  # fmt: skip
    alice = await central_call(central, storage.get_user, "alice")
    config = core_config(
        node_config(tmp_path, central.pki, central.address, sample_interval=1.0), v2ray_core
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop))
        await wait_for(lambda: daemon.node.applied["proxy"].get("alice"), "alice in the core")
        url = http_blob_server.url(300_000)
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, url) == 300_000
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, url) == 300_000  # crosses it
        rounds_at_crossing = daemon.sampler.rounds
        # Removed by the first sample that sees the crossing: central decides and pushes
        # the suspension before the sampler completes another round (counted in rounds,
        # not seconds, so a loaded machine cannot make this flaky or hide a slow path).
        await wait_for(
            lambda: not daemon.node.applied["proxy"].get("alice"), "alice's removal", timeout=10
        )
        assert daemon.sampler.rounds - rounds_at_crossing <= 2
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, url) is None
        # Renewal on central (usage reset) brings her back.
        next_month = int(time.time() * 1000) + 30 * 86_400_000
        await central_call(
            central, storage.renew, "alice", actor=ADMIN, reset_usage=True,
            expires_at_ms=next_month,
        )  # fmt: skip
        await wait_for(lambda: daemon.node.applied["proxy"].get("alice"), "alice back")
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, http_blob_server.url(1000)) == 1000
        stop.set()


async def test_sigterm_drain_hands_central_the_last_sample_before_exit(
    tmp_path, central, v2ray_core, http_blob_server
):
    storage = central.storage
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    alice = await central_call(central, storage.get_user, "alice")
    # Samples far apart: only the drain's final sample can carry the traffic.
    config = core_config(
        node_config(tmp_path, central.pki, central.address, sample_interval=600.0), v2ray_core
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop))
        await wait_for(lambda: daemon.node.applied["proxy"].get("alice"), "alice in the core")
        await wait_for(lambda: daemon.uplink.status.state == "connected", "the uplink")
        assert await fetch_as(v2ray_core, tmp_path, alice.uuid, http_blob_server.url(50_000))
        stop.set()
    # serve() returned: the drain already waited for central's ack.
    counted = await core_bytes(v2ray_core, "alice")
    assert counted > 50_000
    assert await user_total(central, "alice") == counted
