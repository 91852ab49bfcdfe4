"""Autonomy on real parts: central stopped, the node keeps serving and enforcing on its
own (expiry, spent quota lease) on the real core; central back -> nothing lost."""

from __future__ import annotations

import functools
import time

import pytest
import trio

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
def central(tmp_path):
    central = start_central(tmp_path)
    try:
        yield central
    finally:
        central.stop()


async def test_disconnected_node_expires_and_spends_leases_then_replays_everything(
    tmp_path, central, v2ray_core, http_blob_server
):
    storage = central.storage
    expiry = int(time.time() * 1000) + 6_000
    users = {
        "alice": {},  # no limits: served throughout
        "bob": {"expires_at_ms": expiry},
        "carol": {"data_limit_bytes": 400_000},
    }
    secrets = {}
    for user_id, limits in users.items():
        await central_call(
            central, storage.create_user, user_id, actor=ADMIN, node_ids=["node-a"], **limits
        )
        secrets[user_id] = (await central_call(central, storage.get_user, user_id)).uuid
    config = core_config(node_config(tmp_path, central.pki, central.address), v2ray_core)
    url = http_blob_server.url(300_000)

    async def fetch(user_id: str) -> int | None:
        return await fetch_as(v2ray_core, tmp_path, secrets[user_id], url)

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(functools.partial(serve, config, shutdown_trigger=stop))
        node = daemon.node
        await wait_for(lambda: len(node.applied["proxy"]) == 3, "all three in the core")
        await wait_for(lambda: "carol" in node.leases, "carol's lease")
        assert node.leases["carol"].granted == 400_000

        await trio.to_thread.run_sync(central.stop)
        await wait_for(lambda: daemon.uplink.status.state != "connected", "the cut")

        # carol spends her lease while central is away: suspended locally.
        assert await fetch("carol") == 300_000
        assert await fetch("carol") == 300_000
        await wait_for(lambda: "carol" not in node.applied["proxy"], "carol removed", timeout=10)
        assert await fetch("carol") is None
        assert "lease" in node.explain("carol")["reason"]
        # bob's expiry passes while central is away: removed locally.
        assert await fetch("bob") == 300_000
        await wait_for(lambda: "bob" not in node.applied["proxy"], "bob expired", timeout=15)
        assert await fetch("bob") is None
        assert "expired" in node.explain("bob")["reason"]
        # alice is served throughout.
        assert await fetch("alice") == 300_000
        assert (await node.journal.outbox_stats()).rows > 0
        assert len(await node.journal.unreported_decisions()) == 2

        # central comes back: the outbox replays, decisions are reported, nothing lost.
        await trio.to_thread.run_sync(central.start)
        storage = central.storage
        expected = {u: await core_bytes(v2ray_core, u) for u in users}

        async def central_totals():
            got = {}
            for user_id in users:
                user = await central_call(central, storage.get_user, user_id)
                got[user_id] = user.uplink_bytes + user.downlink_bytes
            return got

        async def replayed():
            return await central_totals() == expected

        await wait_for(replayed, "central's totals to equal the core's counters")
        await wait_for(_none_left(node.journal), "the local decisions to be confirmed", timeout=10)
        audit = await central_call(central, storage.audit_log)
        local = {(e.action, e.subject) for e in audit if e.actor == "node:node-a"}
        assert local == {("local-suspend", "bob"), ("local-suspend", "carol")}
        # carol's quota is spent on central too now; she stays off the core.
        await wait_for(lambda: node.desired.user("carol").suspended, "central suspends carol")
        stop.set()


def _none_left(journal):
    async def check():
        return not await journal.unreported_decisions()

    return check
