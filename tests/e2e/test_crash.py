"""kill -9 of the real agent process at its critical points, against real central and a
real v2ray moving real bytes: central's totals end equal to the core's own counters
(0 lost, 0 counted twice)."""

from __future__ import annotations

import contextlib
import random
import signal

import trio

from edgeward.agent.journal import open_journal
from tests.e2e.agent_process import AgentProcess
from tests.e2e.agent_setup import (
    ADMIN,
    central_call,
    core_bytes,
    core_config,
    node_config,
    start_central,
    wait_for,
)
from tests.support.v2ray import FetchFailed, fetch_through, open_client

SEED = 20261203
# (crash point, how many passes before the kill): reading counters and committing
# them, sending a batch and its ack, applying users to the core.
POINTS = [("after-read", (2, 3, 4)), ("after-send", (1, 2)), ("during-reconcile", (1,))]


async def test_kill_9_at_every_point_loses_and_doubles_nothing(
    tmp_path, v2ray_core, http_blob_server
):
    rng = random.Random(SEED)
    central = start_central(tmp_path)
    try:
        storage = central.storage
        await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
        secret = (await central_call(central, storage.get_user, "alice")).uuid
        config = core_config(
            node_config(tmp_path, central.pki, central.address, sample_interval=0.3), v2ray_core
        )
        moved = 0

        async def traffic(client, stop: trio.Event) -> None:
            nonlocal moved
            url = http_blob_server.url(rng.randrange(20_000, 120_000))
            while not stop.is_set():
                with contextlib.suppress(FetchFailed):  # alice not applied yet (first start)
                    moved += await trio.to_thread.run_sync(fetch_through, client.socks_port, url)
                await trio.sleep(0.05)

        kills = []
        with open_client(tmp_path, v2ray_core, "vless", secret) as client:
            for point, counts in POINTS * 2:
                crash_at = f"{point}:{rng.choice(counts)}"
                agent = AgentProcess(config, tmp_path, crash_at=crash_at)
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(traffic, client, stop)
                    try:
                        await wait_for(
                            lambda agent=agent: agent.poll() is not None, f"the kill at {crash_at}"
                        )
                    finally:
                        stop.set()
                        agent.kill()
                async with open_journal(config.journal_path) as journal:
                    kills.append((crash_at, agent.poll(), await journal.outbox_stats()))
            assert all(code == -signal.SIGKILL for _, code, _ in kills), (kills, agent.log)
            assert moved > 0
            # The kills hit a live outbox: deltas were journalled across rounds, and some
            # kill left deltas central had not acknowledged (the replay is exercised).
            heads = [stats.high_seq for _, _, stats in kills]
            assert heads == sorted(heads) and heads[-1] > heads[0], kills
            assert any(stats.rows for _, _, stats in kills), kills
            # A clean run afterwards reports everything the core counted.
            agent = AgentProcess(config, tmp_path)
            try:
                counted = await core_bytes(v2ray_core, "alice")

                async def exact():
                    user = await central_call(central, storage.get_user, "alice")
                    return user.uplink_bytes + user.downlink_bytes == counted

                await wait_for(exact, "central's total to equal the core's counters", 30)
                assert agent.terminate() == 0, agent.log
            finally:
                agent.kill()
        assert counted >= moved
    finally:
        central.stop()
