"""Sampler logic with stub engines (the same calls are exercised against the
real v2ray core in test_sampler_core.py and real wireguard-go in
test_sampler_wg.py): epochs, skipped engines, refused counters."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import pytest
import trio

from edgeward.agent.core_driver import CoreCallError, CoreUnavailable
from edgeward.agent.deltas import (
    ENGINE_PROXY,
    ENGINE_WIREGUARD,
    proxy_counter,
    wg_counter,
)
from edgeward.agent.journal import open_journal
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.sampler import (
    Sampler,
    parse_wg_marker,
    proxy_owners,
    wg_epoch_inputs,
)

WALL = 1_700_000_000_000
UP, DOWN = proxy_counter("a@x", "uplink"), proxy_counter("a@x", "downlink")


def state(*, suspended: bool = False) -> DesiredState:
    user = ProxyUser(
        "vless-in", ProxyProtocol.VLESS, "a@x", "0" * 8 + "-0000-4000-8000-" + "0" * 12
    )
    return DesiredState(1, (DesiredUser("alice", (user,), suspended=suspended),))


@dataclass
class SysStats:
    uptime: int


class StubCore:
    """Answers sys_stats/query_stats like CoreDriver (uptime in s, counters by name)."""

    def __init__(self) -> None:
        self.uptime = 100
        self.counters: dict[str, object] = {}
        self.fail: Exception | None = None
        self.restart_during_query = False
        self.sys_stats_calls = 0

    async def sys_stats(self) -> SysStats:
        self.sys_stats_calls += 1
        if self.fail:
            raise self.fail
        return SysStats(self.uptime)

    async def query_stats(self, pattern: str = "", *, reset: bool = False) -> dict:
        assert not reset and pattern == "user>>>"
        counters = dict(self.counters)
        if self.restart_during_query:
            self.uptime = 0
        return counters

    async def read_counters(self, pattern: str) -> tuple[dict, StubUptime]:
        """CoreDriver.read_counters: the counters, then the uptime asked right after."""
        if self.fail:
            raise self.fail
        counters = await self.query_stats(pattern)
        self.sys_stats_calls += 1
        return counters, StubUptime(self.uptime, trio.current_time())


@dataclass
class StubUptime:
    uptime: int
    arrived: float

    async def result(self) -> tuple[int, float]:
        return self.uptime, self.arrived


def sampler(journal, core, desired=None) -> Sampler:
    return Sampler(journal, desired=lambda: desired or state(), core=core, wall_ms=lambda: WALL + 1)


# ---------------------------------------------------------------- pure parts


def test_wg_epoch_carries_baselines_of_interfaces_not_recreated():
    a_rx, b_rx = wg_counter("wg0", "K1", "rx"), wg_counter("wg1", "K2", "rx")
    baselines = {a_rx: 10, b_rx: 20}
    assert wg_epoch_inputs({"wg0": "t1", "wg1": "u1"}, baselines, {"wg0": "t1"}) == (
        False,
        baselines,
    )
    # a new interface is no new epoch: its counters have no baselines yet
    assert wg_epoch_inputs({"wg0": "t1"}, baselines, {"wg0": "t1", "wg9": "x"})[0] is False
    assert wg_epoch_inputs({"wg0": "t1", "wg1": "u1"}, baselines, {"wg0": "t2", "wg1": "u1"}) == (
        True,
        {b_rx: 20},
    )


def test_wg_marker_parsing_tolerates_absent_or_foreign_markers():
    assert parse_wg_marker(None) == {} == parse_wg_marker("") == parse_wg_marker("[1]")
    assert parse_wg_marker("not json") == {}
    assert parse_wg_marker(json.dumps({"wg0": "t"})) == {"wg0": "t"}


def test_suspended_users_still_own_their_counters():
    assert proxy_owners(state(suspended=True)) == {"a@x": "alice"}


# ---------------------------------------------------------------- with a journal


async def test_deltas_epochs_and_zero_rounds(tmp_path):
    core = StubCore()
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        gone = proxy_counter("gone@x", "uplink")  # a user no longer desired
        core.counters = {UP: 100, DOWN: 1000, gone: 7}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink, r.downlink, r.unattributed) == (
            "1",
            True,
            100,
            1000,
            7,
        )
        rows = (await journal.outbox_stats()).rows
        r = (await s.sample_once()).engines[ENGINE_PROXY]  # nothing moved
        assert (r.deltas, r.seqs) == (0, (0, 0))
        assert (await journal.outbox_stats()).rows == rows
        core.counters = {UP: 150, DOWN: 1000, gone: 7}
        core.uptime += 10
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink, r.downlink) == ("1", False, 50, 0)

        # restarted core: the reading that shows it is skipped (of which life?),
        # then a new epoch, counted from zero, nothing subtracted
        core.uptime, core.counters = 0, {UP: 30}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert r.skipped == "the core restarted since the last reading"
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink, r.downlink) == ("2", True, 30, 0)
        assert await journal.outbox_totals() == {
            ("alice", ENGINE_PROXY, "1"): (150, 1000),
            ("alice", ENGINE_PROXY, "2"): (30, 0),
        }


async def test_a_new_agent_continues_the_epoch_of_a_core_still_running(tmp_path):
    core = StubCore()
    core.counters = {UP: 100}
    async with open_journal(tmp_path / "j.db") as journal:
        await sampler(journal, core).sample_once()
        core.counters = {UP: 120}
        r = (await sampler(journal, core).sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink) == ("1", False, 20)


@pytest.mark.parametrize(
    "fail, reason",
    [
        (CoreUnavailable("core unreachable: [Errno 111] Connection refused"), "Connection refused"),
        (CoreCallError("/x/GetSysStats: permission denied"), "refused a stats call"),
    ],
)
async def test_an_unreachable_core_is_skipped_not_zeroed(tmp_path, caplog, fail, reason):
    core = StubCore()
    core.counters = {UP: 100}
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        await s.sample_once()
        core.fail = fail
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert not r.committed and reason in (r.skipped or "")
        assert reason in caplog.text
        assert await journal.baselines(ENGINE_PROXY, "1") == {UP: 100}
        core.fail = None
        core.counters = {UP: 101}
        assert (await s.sample_once()).engines[ENGINE_PROXY].uplink == 1


async def test_restart_during_the_reading_skips_the_round(tmp_path):
    core = StubCore()
    core.counters = {UP: 100}
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        await s.sample_once()
        core.restart_during_query = True
        core.counters = {UP: 500}  # which life of the core is this from? unknowable
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert r.skipped == "the core restarted since the last reading"
        core.restart_during_query = False
        core.counters = {UP: 5}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink) == ("2", True, 5)


async def test_restart_between_rounds_is_seen_by_the_uptime_after_the_reading(tmp_path):
    """After its first round the sampler asks the uptime only after QueryStats:
    a restart since the last round shows there, the reading (of which life?)
    is skipped, and the next round counts the new life from zero."""
    core = StubCore()
    core.counters = {UP: 100}
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        await s.sample_once()
        assert core.sys_stats_calls == 2  # before and after the first reading
        core.counters = {UP: 150}
        assert (await s.sample_once()).engines[ENGINE_PROXY].uplink == 50
        assert core.sys_stats_calls == 3  # after only
        core.uptime, core.counters = 0, {UP: 300}  # restarted between rounds
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert r.skipped == "the core restarted since the last reading"
        assert await journal.baselines(ENGINE_PROXY, "1") == {UP: 150}
        core.counters = {UP: 320}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink) == ("2", True, 320)
        stats = await journal.outbox_stats()
        assert stats.uplink == 150 + 320  # the first life's bytes once, the second's from 0


@pytest.mark.parametrize(
    "value, text",
    [(-5, "is negative: -5"), (1.5, "is not an integer: 1.5"), ("7", "is not an integer: '7'")],
)
async def test_bad_counters_are_refused_and_nothing_is_committed(tmp_path, caplog, value, text):
    core = StubCore()
    core.counters = {UP: 100, DOWN: 10}
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        await s.sample_once()
        before = (await journal.outbox_stats(), await journal.baselines(ENGINE_PROXY, "1"))
        core.counters = {UP: 200, DOWN: value}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert r.error and not r.committed
        assert text in (r.skipped or "") and text in caplog.text
        assert (await journal.outbox_stats(), await journal.baselines(ENGINE_PROXY, "1")) == before


async def test_a_node_without_wireguard_interfaces_skips_that_engine(tmp_path):
    from edgeward.agent.wireguard import WireGuard

    async with open_journal(tmp_path / "j.db") as journal:
        s = Sampler(journal, desired=state, wg=WireGuard())
        r = (await s.sample_once()).engines[ENGINE_WIREGUARD]
        assert r.skipped == "no WireGuard interfaces to sample"
        assert await journal.current_epoch(ENGINE_WIREGUARD) is None


async def test_a_counter_going_down_is_a_restart_the_uptime_did_not_show(tmp_path):
    core = StubCore()
    core.counters = {UP: 100, DOWN: 1000}
    async with open_journal(tmp_path / "j.db") as journal:
        s = sampler(journal, core)
        await s.sample_once()
        # same uptime story, but the core forgot: every counter of the new
        # life is counted in full, also the one already above its old baseline
        core.counters = {UP: 120, DOWN: 10}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink, r.downlink) == ("2", True, 120, 10)
        core.counters = {UP: 130, DOWN: 10}
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert (r.epoch, r.new_epoch, r.uplink) == ("2", False, 10)


async def test_commits_can_go_through_the_node(tmp_path):
    core = StubCore()
    core.counters = {UP: 100}
    seen = []
    async with open_journal(tmp_path / "j.db") as journal:

        async def through_node(sample, *, sampled_at_ms, epoch_marker=None):
            seen.append((sample.epoch, sampled_at_ms, epoch_marker))
            return await journal.commit_sample(
                sample, sampled_at_ms=sampled_at_ms, epoch_marker=epoch_marker
            )

        s = Sampler(journal, desired=state, core=core, commit=through_node, wall_ms=lambda: WALL)
        r = (await s.sample_once()).engines[ENGINE_PROXY]
        assert r.seqs == (1, 1)
        ((epoch, at, marker),) = seen
        assert (epoch, at) == ("1", WALL) and marker == await journal.epoch_marker(ENGINE_PROXY)


# ---------------------------------------------------------------- WireGuard, stub device


class StubWireGuard:
    """Answers instance/peers like WireGuard (the real device: test_sampler_wg.py)."""

    def __init__(self) -> None:
        from edgeward.agent.wireguard import InterfaceInstance, PeerState

        self.instance_of = lambda iface, token: InterfaceInstance("uapi", iface, token)
        self.peer = lambda key, rx, tx: PeerState(key, (), False, rx, tx, None)
        self.tokens = {"wg0": "t1"}
        self.peers_of: dict[str, list] = {"wg0": []}
        self.recreate_while_reading = False

    async def instance(self, iface: str):
        return self.instance_of(iface, self.tokens[iface])

    async def peers(self, iface: str):
        if self.recreate_while_reading:
            self.tokens[iface] += "'"
        return list(self.peers_of[iface])


def wg_state() -> DesiredState:
    from edgeward.agent.model import make_wireguard_peer

    peer = make_wireguard_peer("bob", interface="wg0", public_key=KEY, allowed_ips=[])
    return DesiredState(1, (DesiredUser("bob", wireguard=(peer,)),))


KEY = "A" * 43 + "="


async def test_wg_interface_recreated_while_read_is_skipped_then_a_new_epoch(tmp_path):
    wg = StubWireGuard()
    wg.peers_of["wg0"] = [wg.peer(KEY, 100, 1000)]
    async with open_journal(tmp_path / "j.db") as journal:
        s = Sampler(journal, desired=wg_state, wg=wg)
        r = (await s.sample_once()).engines[ENGINE_WIREGUARD]
        assert (r.epoch, r.uplink, r.downlink) == ("1", 100, 1000)
        wg.recreate_while_reading = True
        wg.peers_of["wg0"] = [wg.peer(KEY, 5, 5)]
        r = (await s.sample_once()).engines[ENGINE_WIREGUARD]
        assert r.skipped == "interface 'wg0' was recreated while being read"
        wg.recreate_while_reading = False
        r = (await s.sample_once()).engines[ENGINE_WIREGUARD]
        assert (r.epoch, r.new_epoch, r.uplink, r.downlink) == ("2", True, 5, 5)
        assert await journal.outbox_totals() == {
            ("bob", ENGINE_WIREGUARD, "1"): (100, 1000),
            ("bob", ENGINE_WIREGUARD, "2"): (5, 5),
        }


async def test_negative_wg_counters_are_refused_and_nothing_is_committed(tmp_path):
    wg = StubWireGuard()
    wg.peers_of["wg0"] = [wg.peer(KEY, 100, 1000)]
    async with open_journal(tmp_path / "j.db") as journal:
        s = Sampler(journal, desired=wg_state, wg=wg)
        await s.sample_once()
        before = (await journal.outbox_stats(), await journal.baselines(ENGINE_WIREGUARD, "1"))
        wg.peers_of["wg0"] = [wg.peer(KEY, 200, -1)]
        r = (await s.sample_once()).engines[ENGINE_WIREGUARD]
        assert r.error and "is negative: -1" in (r.skipped or "")
        assert (
            await journal.outbox_stats(),
            await journal.baselines(ENGINE_WIREGUARD, "1"),
        ) == before


async def test_the_run_loop_folds_each_round_into_the_journal_file(tmp_path):
    """Between rounds, the loop checkpoints: the journal file itself (without
    its -wal) already holds every round, so no later round's commit pays for
    SQLite's automatic checkpoint."""
    core = StubCore()
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        s = sampler(journal, core)
        s.interval = 0.05
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(s.run)
                for n in range(1, 4):
                    core.counters = {UP: 100 * n}
                    while s.rounds < n:
                        await trio.sleep(0.01)
                while s.rounds < 4:  # round 4 starts after round 3's checkpoint
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        copy = tmp_path / "file-only.db"
        copy.write_bytes(path.read_bytes())  # the main file, not its -wal
        conn = sqlite3.connect(copy)
        try:
            rows = conn.execute("SELECT sum(uplink) FROM outbox_sets").fetchone()[0]
        finally:
            conn.close()
        assert rows == (await journal.outbox_stats()).uplink == 300
