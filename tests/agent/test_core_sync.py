"""Epoch detection (pure) and the sync loop re-filling a real v2ray after a restart."""

from __future__ import annotations

import uuid

import trio
from grpclib.exceptions import GRPCError

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.core_driver import CoreDriver
from edgeward.agent.core_flavor import V2FLY
from edgeward.agent.core_sync import CoreSync, Epoch, EpochTracker
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from tests.support.rawcore import raw_add_vless
from tests.support.v2ray import fetch_through, open_client

# ---------------------------------------------------------------- pure tracker

WALL = 1_700_000_000_000


def test_first_reading_starts_an_epoch_from_the_core_start_time():
    t = EpochTracker()
    epoch = t.observe(uptime_s=30, now_mono=100.0, now_wall_ms=WALL)
    assert epoch == Epoch(str(WALL - 30_000), WALL - 30_000)


def test_same_process_within_uptime_granularity_is_not_a_new_epoch():
    t = EpochTracker()
    t.observe(0, 100.0, WALL)
    # Uptime is truncated seconds: 100.99 s later it may still read 100.
    assert t.observe(100, 200.99, WALL) is None
    assert t.observe(101, 201.0, WALL) is None


def test_uptime_going_down_is_a_restart():
    t = EpochTracker()
    t.observe(5, 100.0, WALL)
    assert t.observe(0, 100.2, WALL + 200) is not None


def test_start_moving_later_is_a_restart_even_if_uptime_grew():
    t = EpochTracker()
    t.observe(1, 100.0, WALL)
    # Not polled for 10 s; the core restarted 3 s ago and now reads 3 (> 1).
    assert t.observe(3, 110.0, WALL + 10_000) is not None


def test_known_epoch_survives_an_agent_restart():
    known = Epoch(str(WALL - 60_000), WALL - 60_000)
    t = EpochTracker(known=known)
    assert t.observe(60, 5.0, WALL + 400) is None  # same core, new agent process
    other = EpochTracker(known=known)
    assert other.observe(2, 5.0, WALL) is not None  # the core restarted meanwhile


def test_forced_epoch_ids_are_distinct():
    t = EpochTracker()
    first = t.observe(0, 1.0, WALL)
    assert first is not None
    assert t.force_new(0, 1.1, WALL).id != first.id


# ---------------------------------------------------------------- real core


def vless_user(email: str) -> ProxyUser:
    return ProxyUser("vless-in", ProxyProtocol.VLESS, email, str(uuid.uuid4()))


async def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.2)


async def in_core(core, user: ProxyUser) -> bool:
    """Independent check: a raw add of the email is refused iff the core holds it."""
    try:
        await trio.to_thread.run_sync(
            raw_add_vless, core.api_port, user.inbound_tag, user.email, user.secret
        )
    except GRPCError as e:
        assert "already exists" in (e.message or "")
        return True
    # It was missing; the check itself added it, so call this last for that user.
    return False


async def download(core, tmp_path, blob, user: ProxyUser, n: int = 200_000) -> int:
    with open_client(tmp_path, core, "vless", user.secret) as client:
        return await trio.to_thread.run_sync(fetch_through, client.socks_port, blob.url(n), 10.0)


async def test_restarted_core_is_refilled_without_being_told(
    v2ray_core, http_blob_server, tmp_path
):
    alice, bob = vless_user("alice@vless"), vless_user("bob@vless")
    desired = DesiredState(revision=1, users=(DesiredUser("a", (alice,)), DesiredUser("b", (bob,))))
    epochs: list[Epoch] = []

    async def record(epoch: Epoch) -> None:
        epochs.append(epoch)

    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, desired=desired, poll_interval=0.2, on_epoch=record)
        await nursery.start(sync.run)
        await wait_until(lambda: len(sync.applied) == 2, "first fill")
        assert await download(v2ray_core, tmp_path, http_blob_server, alice) == 200_000
        first_pid = v2ray_core.pid

        await trio.to_thread.run_sync(v2ray_core.restart)
        assert v2ray_core.pid != first_pid
        await wait_until(lambda: len(epochs) == 2 and len(sync.applied) == 2, "re-fill")
        assert sync.epoch_evidence in ("uptime", "forgotten user")
        assert epochs[0].id != epochs[1].id
        assert sync.epoch == epochs[1]
        assert await in_core(v2ray_core, alice) and await in_core(v2ray_core, bob)
        assert await download(v2ray_core, tmp_path, http_blob_server, alice) == 200_000
        nursery.cancel_scope.cancel()


async def test_core_down_is_retried_then_refilled(v2ray_core, http_blob_server, tmp_path):
    alice = vless_user("alice@vless")
    desired = DesiredState(revision=1, users=(DesiredUser("a", (alice,)),))
    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, desired=desired, poll_interval=0.2, backoff_max=0.5)
        await nursery.start(sync.run)
        await wait_until(lambda: len(sync.applied) == 1, "first fill")
        v2ray_core.kill()
        await wait_until(lambda: not sync.reachable, "noticed the core is down")
        await trio.sleep(1.0)  # several refused connections: the loop keeps going
        assert sync.epochs_seen == 1
        await trio.to_thread.run_sync(v2ray_core.start)
        await wait_until(lambda: sync.epochs_seen == 2 and len(sync.applied) == 1, "re-fill")
        assert await download(v2ray_core, tmp_path, http_blob_server, alice) == 200_000
        nursery.cancel_scope.cancel()


async def test_desired_changes_are_applied_and_suspension_removes(
    v2ray_core, http_blob_server, tmp_path
):
    alice, bob = vless_user("alice@vless"), vless_user("bob@vless")
    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, poll_interval=0.2)
        await nursery.start(sync.run)
        sync.set_desired(DesiredState(1, (DesiredUser("a", (alice,)), DesiredUser("b", (bob,)))))
        await wait_until(lambda: len(sync.applied) == 2, "both applied")
        sync.set_desired(
            DesiredState(2, (DesiredUser("a", (alice,)), DesiredUser("b", (bob,), suspended=True)))
        )
        await wait_until(lambda: len(sync.applied) == 1, "bob removed")
        assert sync.last_pass is not None and sync.last_pass.revision == 2
        assert await in_core(v2ray_core, alice)
        assert not await in_core(v2ray_core, bob)
        nursery.cancel_scope.cancel()


async def test_conflicting_uuid_is_refused_and_reported(v2ray_core):
    alice = vless_user("alice@vless")
    mallory = ProxyUser("vless-in", ProxyProtocol.VLESS, "mallory@vless", alice.secret)
    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, poll_interval=0.2)
        await nursery.start(sync.run)
        sync.set_desired(DesiredState(1, (DesiredUser("a", (alice,)),)))
        await wait_until(lambda: len(sync.applied) == 1, "alice applied")
        sync.set_desired(
            DesiredState(2, (DesiredUser("a", (alice,)), DesiredUser("m", (mallory,))))
        )
        await wait_until(
            lambda: sync.last_pass is not None and sync.last_pass.revision == 2, "pass"
        )
        (refusal,) = sync.last_pass.refusals
        assert refusal.user_id == "m" and alice.secret in refusal.reason
        assert not await in_core(v2ray_core, mallory)
        nursery.cancel_scope.cancel()


async def test_expiry_removes_without_a_new_desired_state(v2ray_core):
    # `now` is injected: the wall clock the sync loop reconciles with.
    now = [WALL]
    alice, bob = vless_user("alice@vless"), vless_user("bob@vless")
    desired = DesiredState(
        1, (DesiredUser("a", (alice,), expires_at_ms=WALL + 60_000), DesiredUser("b", (bob,)))
    )
    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, desired=desired, poll_interval=0.2, wall_ms=lambda: now[0])
        await nursery.start(sync.run)
        await wait_until(lambda: len(sync.applied) == 2, "both applied")
        now[0] = WALL + 60_000
        await wait_until(lambda: len(sync.applied) == 1, "alice expired")
        assert sync.last_pass is not None and sync.last_pass.held == 1
        assert await in_core(v2ray_core, bob)
        assert not await in_core(v2ray_core, alice)
        nursery.cancel_scope.cancel()


async def test_core_errors_are_reported_per_user_and_retried(v2ray_core):
    alice = vless_user("alice@vless")
    stray = ProxyUser("no-such-in", ProxyProtocol.VLESS, "zed@vless", str(uuid.uuid4()))
    desired = DesiredState(1, (DesiredUser("a", (alice,)), DesiredUser("z", (stray,))))
    async with open_island() as island, trio.open_nursery() as nursery:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, desired=desired, poll_interval=0.1)
        await nursery.start(sync.run)
        await wait_until(lambda: sync.passes >= 3, "a few passes")
        assert set(sync.applied) == {alice.key}
        (problem,) = sync.last_pass.problems()
        assert problem[0] == "z" and "handler not found: no-such-in" in problem[1]
        nursery.cancel_scope.cancel()


class FirstOnlyTracker(EpochTracker):
    """Sees the first epoch, never a restart: isolates the forgotten-user probe."""

    def observe(self, uptime_s, now_mono, now_wall_ms):
        if self.known is None:
            return super().observe(uptime_s, now_mono, now_wall_ms)
        return None


async def test_restart_hidden_from_uptime_is_caught_by_the_probe(v2ray_core):
    alice = vless_user("alice@vless")
    async with open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        sync = CoreSync(driver, desired=DesiredState(1, (DesiredUser("a", (alice,)),)))
        sync.tracker = FirstOnlyTracker()
        await sync._tick()
        assert sync.epoch_evidence == "first contact" and set(sync.applied) == {alice.key}
        first = sync.epoch

        # The connection drops but the core lives on: the probe finds alice
        # still there, so no new epoch (a false one would double-count traffic).
        probes = []
        real_try_add = driver.try_add

        async def counting_try_add(user):
            probes.append(user.email)
            return await real_try_add(user)

        driver.try_add = counting_try_add
        await island.run(driver._client._close_in_asyncio)
        await sync._tick()
        assert driver.connection_generation == 2 and probes == ["alice@vless"]
        assert sync.epoch == first and sync.epochs_seen == 1

        # A real restart: the core forgot alice; the probe re-adds her and
        # starts the new epoch, the pass re-fills.
        await trio.to_thread.run_sync(v2ray_core.restart)
        await sync._tick()
        assert sync.epoch_evidence == "forgotten user"
        assert sync.epochs_seen == 2 and sync.epoch != first
        assert set(sync.applied) == {alice.key}
        assert await in_core(v2ray_core, alice)
