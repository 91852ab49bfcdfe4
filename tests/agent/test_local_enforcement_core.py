"""Local enforcement end to end on a real v2ray core: real bytes spend a user's
lease, the sampler charges them, the user is removed from the core (a new
connection fails), and a new grant brings them back."""

from __future__ import annotations

import uuid

import pytest
import trio

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.core_driver import CoreDriver
from edgeward.agent.core_flavor import V2FLY
from edgeward.agent.core_sync import CoreSync
from edgeward.agent.journal import open_journal
from edgeward.agent.local_enforcement import LEASE_SPENT, RESUME, SUSPEND, LocalEnforcer
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.sampler import Sampler
from tests.support.v2ray import FetchFailed, fetch_through, open_client


async def download(core, tmp_path, blob, secret: str, n: int) -> int:
    with open_client(tmp_path, core, "vless", secret) as client:
        return await trio.to_thread.run_sync(fetch_through, client.socks_port, blob.url(n), 10.0)


async def wait_until(predicate, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.1)


async def test_spent_lease_removes_the_user_and_a_new_grant_restores_it(
    v2ray_core, http_blob_server, tmp_path
):
    alice = ProxyUser("vless-in", ProxyProtocol.VLESS, "alice@vless", str(uuid.uuid4()))
    bob = ProxyUser("vless-in", ProxyProtocol.VLESS, "bob@vless", str(uuid.uuid4()))
    desired = DesiredState(1, (DesiredUser("alice", (alice,)), DesiredUser("bob", (bob,))))
    async with (
        open_island() as island,
        open_journal(tmp_path / "j.db") as journal,
        trio.open_nursery() as nursery,
    ):
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, poll_interval=0.2)

        async def serve(effective: DesiredState) -> None:  # the node's part
            sync.set_desired(effective)

        enforcer = LocalEnforcer(journal, desired=lambda: desired, on_change=serve)
        sampler = Sampler(
            journal, desired=lambda: desired, core=driver, after_sample=enforcer.after_sample
        )
        await journal.grant_leases([("alice", 1, 200_000)])  # bob: no quota, no limit
        await enforcer.check()
        sync.set_desired(enforcer.effective())
        await nursery.start(sync.run)
        await wait_until(lambda: len(sync.applied) == 2)
        await sampler.sample_once()  # baselines: nothing spent yet

        assert await download(v2ray_core, tmp_path, http_blob_server, alice.secret, 300_000)
        assert await download(v2ray_core, tmp_path, http_blob_server, bob.secret, 300_000)
        await sampler.sample_once()  # charges the lease, enforcement follows
        assert (await journal.leases())["alice"].used > 300_000
        assert (await journal.enforcement())["alice"].suspended
        await wait_until(lambda: alice.key not in sync.applied)
        with pytest.raises(FetchFailed):
            await download(v2ray_core, tmp_path, http_blob_server, alice.secret, 1000)
        assert await download(v2ray_core, tmp_path, http_blob_server, bob.secret, 1000) == 1000

        await journal.grant_leases([("alice", 2, 10_000_000)])  # central's new grant
        await enforcer.check()
        await wait_until(lambda: alice.key in sync.applied)
        assert await download(v2ray_core, tmp_path, http_blob_server, alice.secret, 1000) == 1000
        decisions = [
            (d.user_id, d.action, d.reason) for _, d in await journal.unreported_decisions()
        ]
        assert decisions == [("alice", SUSPEND, LEASE_SPENT), ("alice", RESUME, LEASE_SPENT)]
        nursery.cancel_scope.cancel()
