"""The sampler against a real v2ray core with real bytes through a real client:
the outbox must hold exactly what the core's own counters say (read
independently with raw grpclib calls), across core restarts, agent restarts
and SIGKILLs of the sampling process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import trio

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.core_driver import CoreDriver
from edgeward.agent.core_flavor import V2FLY
from edgeward.agent.core_sync import CoreSync
from edgeward.agent.deltas import ENGINE_PROXY, proxy_counter
from edgeward.agent.journal import open_journal
from edgeward.agent.journal_store import JournalStore
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.sampler import Sampler
from tests.support.rawcore import raw_add_vless, raw_query_stats, raw_uptime
from tests.support.v2ray import fetch_through, open_client

EMAIL = "alice@vless"


def alice() -> ProxyUser:
    return ProxyUser("vless-in", ProxyProtocol.VLESS, EMAIL, str(uuid.uuid4()))


def desired_of(user: ProxyUser) -> DesiredState:
    return DesiredState(1, (DesiredUser("alice", (user,)),))


def core_counters(core) -> tuple[int, int]:
    """The core's own (uplink, downlink) of alice, once they stopped moving."""
    last = None
    for _ in range(50):
        stats = raw_query_stats(core.api_port, "user>>>")
        now = (
            stats.get(proxy_counter(EMAIL, "uplink"), 0),
            stats.get(proxy_counter(EMAIL, "downlink"), 0),
        )
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    raise AssertionError(f"alice's counters kept moving: {last}")


def wait_uptime(core, seconds: int) -> None:
    for _ in range(100):
        if raw_uptime(core.api_port) >= seconds:
            return
        time.sleep(0.1)
    raise AssertionError(f"core uptime did not reach {seconds} s")


async def download(core, tmp_path, blob, user: ProxyUser, n: int) -> None:
    with open_client(tmp_path, core, "vless", user.secret) as client:
        got = await trio.to_thread.run_sync(fetch_through, client.socks_port, blob.url(n), 15.0)
    assert got == n


async def test_outbox_holds_exactly_the_core_counted_bytes_across_restarts(
    v2ray_core, http_blob_server, tmp_path
):
    user = alice()
    desired = desired_of(user)
    async with open_island() as island, open_journal(tmp_path / "j.db") as journal:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        await CoreSync(driver, desired=desired).sync_once()
        sampler = Sampler(journal, desired=lambda: desired, core=driver)

        await download(v2ray_core, tmp_path, http_blob_server, user, 300_000)
        counted = await trio.to_thread.run_sync(core_counters, v2ray_core)
        first = (await sampler.sample_once()).engines[ENGINE_PROXY]
        assert (first.epoch, first.new_epoch) == ("1", True)
        assert await journal.outbox_totals() == {("alice", ENGINE_PROXY, "1"): counted}
        assert counted[1] > 300_000

        rows = (await journal.outbox_stats()).rows
        assert (await sampler.sample_once()).engines[ENGINE_PROXY].deltas == 0
        assert (await journal.outbox_stats()).rows == rows  # zero deltas are not stored

        await download(v2ray_core, tmp_path, http_blob_server, user, 200_000)
        counted = await trio.to_thread.run_sync(core_counters, v2ray_core)
        # GetSysStats uptime is whole seconds: only a core that lived past 1 s
        # can be told from its successor by uptime alone (see Sampler's doc).
        await trio.to_thread.run_sync(wait_uptime, v2ray_core, 2)
        # a restarted agent (new sampler) continues the same epoch of the same core
        again = Sampler(journal, desired=lambda: desired, core=driver)
        r = (await again.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch) == ("1", False)
        assert await journal.outbox_totals() == {("alice", ENGINE_PROXY, "1"): counted}
        epoch1 = counted

        # the core restarts: counters from zero in a new epoch, nothing subtracted
        await trio.to_thread.run_sync(v2ray_core.restart)
        await CoreSync(driver, desired=desired).sync_once()  # re-fill (CoreSync's job)
        await download(v2ray_core, tmp_path, http_blob_server, user, 100_000)
        counted = await trio.to_thread.run_sync(core_counters, v2ray_core)
        # the uptime after the reading shows the restart since the last round:
        # which life's counters were read is unknowable, so the round is skipped
        r = (await again.sample_once()).engines[ENGINE_PROXY]
        assert r.skipped == "the core restarted since the last reading"
        r = (await again.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch) == ("2", True)
        assert (r.uplink, r.downlink) == counted
        assert await journal.outbox_totals() == {
            ("alice", ENGINE_PROXY, "1"): epoch1,
            ("alice", ENGINE_PROXY, "2"): counted,
        }


async def test_a_restart_too_quick_for_the_uptime_is_seen_in_the_counters(
    v2ray_core, http_blob_server, tmp_path
):
    user = alice()
    desired = desired_of(user)
    async with open_island() as island, open_journal(tmp_path / "j.db") as journal:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        await CoreSync(driver, desired=desired).sync_once()
        sampler = Sampler(journal, desired=lambda: desired, core=driver)
        await download(v2ray_core, tmp_path, http_blob_server, user, 300_000)
        epoch1 = await trio.to_thread.run_sync(core_counters, v2ray_core)
        await sampler.sample_once()
        await trio.to_thread.run_sync(v2ray_core.restart)  # maybe within the same second
        await CoreSync(driver, desired=desired).sync_once()
        await download(v2ray_core, tmp_path, http_blob_server, user, 100_000)
        epoch2 = await trio.to_thread.run_sync(core_counters, v2ray_core)
        r = (await sampler.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch) == ("2", True)
        assert await journal.outbox_totals() == {
            ("alice", ENGINE_PROXY, "1"): epoch1,
            ("alice", ENGINE_PROXY, "2"): epoch2,
        }


async def test_core_down_is_skipped_with_a_reason_and_nothing_is_lost(
    v2ray_core, http_blob_server, tmp_path, caplog
):
    user = alice()
    desired = desired_of(user)
    async with open_island() as island, open_journal(tmp_path / "j.db") as journal:
        driver = await CoreDriver.open(island, "127.0.0.1", v2ray_core.api_port, V2FLY)
        await CoreSync(driver, desired=desired).sync_once()
        sampler = Sampler(journal, desired=lambda: desired, core=driver)
        await download(v2ray_core, tmp_path, http_blob_server, user, 100_000)
        counted = await trio.to_thread.run_sync(core_counters, v2ray_core)
        await sampler.sample_once()
        before = await journal.outbox_stats()

        await trio.to_thread.run_sync(v2ray_core.kill)
        r = (await sampler.sample_once()).engines[ENGINE_PROXY]
        assert not r.committed and "unreachable" in (r.skipped or "")
        assert "proxy not sampled this round" in caplog.text
        assert await journal.outbox_stats() == before
        assert await journal.outbox_totals() == {("alice", ENGINE_PROXY, "1"): counted}


# ---------------------------------------------------------------- SIGKILL

# Samples the real core every 20 ms forever; prints the round count after each.
CHILD = """
import sys, trio
from edgeward.agent.aio_bridge import open_island
from edgeward.agent.core_driver import CoreDriver
from edgeward.agent.core_flavor import V2FLY
from edgeward.agent.journal import open_journal
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.sampler import Sampler

async def main(path, port, email, secret):
    user = ProxyUser("vless-in", ProxyProtocol.VLESS, email, secret)
    desired = DesiredState(1, (DesiredUser("alice", (user,)),))
    async with open_journal(path) as journal, open_island() as island:
        driver = await CoreDriver.open(island, "127.0.0.1", int(port), V2FLY)
        async def report(r):
            print(sampler.rounds, flush=True)
        sampler = Sampler(
            journal, desired=lambda: desired, core=driver, interval=0.02, after_sample=report
        )
        await sampler.run()

trio.run(main, *sys.argv[1:])
"""


def run_child_until(args: list[str], rounds: int, rng: random.Random) -> None:
    """Run the sampling child until it reported `rounds` rounds, then SIGKILL it
    at a random moment (between reads, inside a commit, anywhere)."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as child:
        watchdog = threading.Timer(60, child.kill)  # bound: a hung child is killed
        watchdog.start()
        try:
            assert child.stdout is not None
            seen = 0
            while seen < rounds:
                line = child.stdout.readline()
                assert line, f"child ended after {seen} rounds"
                seen = int(line)
            time.sleep(rng.uniform(0, 0.06))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


def test_sigkilled_sampler_loses_nothing_and_counts_nothing_twice(
    v2ray_core, http_blob_server, tmp_path
):
    user = alice()
    raw_add_vless(v2ray_core.api_port, "vless-in", EMAIL, user.secret)
    path = tmp_path / "j.db"
    args = [str(path), str(v2ray_core.api_port), EMAIL, user.secret]
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    with open_client(tmp_path, v2ray_core, "vless", user.secret) as client:
        for _ in range(4):
            # bytes move while the sampler runs and dies
            fetch = threading.Thread(
                target=fetch_through, args=(client.socks_port, http_blob_server.url(3_000_000))
            )
            fetch.start()
            try:
                run_child_until(args, rounds=rng.randint(2, 12), rng=rng)
            finally:
                fetch.join(timeout=30)
    counted = core_counters(v2ray_core)
    run_child_until(args, rounds=3, rng=rng)  # a last run sees the final counters

    store = JournalStore.open(path)
    try:
        totals = store.outbox_totals()
    finally:
        store.close()
    assert totals == {("alice", ENGINE_PROXY, "1"): counted}, f"seed {seed}"
    assert counted[1] > 4 * 3_000_000
