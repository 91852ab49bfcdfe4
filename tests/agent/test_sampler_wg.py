"""The sampler against real wireguard-go in two namespaces. Both interfaces
are the node's; wireguard-tools' `wg show dump` is the independent reader of
the counters the outbox must match."""

from __future__ import annotations

import functools

import trio

from edgeward.agent.deltas import ENGINE_WIREGUARD, wg_counter
from edgeward.agent.journal import open_journal
from edgeward.agent.model import DesiredState, DesiredUser, make_wireguard_peer
from edgeward.agent.sampler import Sampler
from edgeward.agent.wg_sync import WgSync
from edgeward.agent.wireguard import WireGuard
from tests.support.wgnet import WgPair, remove_socket, stop_process


def desired_for(pair: WgPair) -> DesiredState:
    a, b = pair.a, pair.b
    on_a = make_wireguard_peer(
        "client-b", interface=a.iface, public_key=b.public_key, allowed_ips=[b.tunnel_cidr]
    )
    on_b = make_wireguard_peer(
        "client-a", interface=b.iface, public_key=a.public_key, allowed_ips=[a.tunnel_cidr]
    )
    return DesiredState(
        1, (DesiredUser("client-b", wireguard=(on_a,)), DesiredUser("client-a", wireguard=(on_b,)))
    )


def counters(pair: WgPair) -> dict[str, tuple[int, int]]:
    """user -> (rx, tx) of its peer, as `wg show dump` reports them."""
    a, b = pair.a, pair.b
    out = {}
    for user, end, peer in (("client-b", a, b), ("client-a", b, a)):
        dump = pair.wg_dump_peers(end).get(peer.public_key)
        out[user] = (dump["rx_bytes"], dump["tx_bytes"]) if dump else (0, 0)
    return out


async def sample_stable(pair: WgPair, sampler: Sampler):
    """A round whose reading lies between two equal `wg show dump` readings."""
    for _ in range(10):
        before = counters(pair)
        report = await sampler.sample_once()
        if counters(pair) == before:
            return report, before
        await trio.sleep(0.5)
    raise AssertionError("WireGuard counters kept moving")


async def ping(pair: WgPair, **kw) -> bool:
    return await trio.to_thread.run_sync(functools.partial(pair.ping, pair.b, pair.a.tunnel, **kw))


def totals_by_user(totals) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for (user, engine, epoch), value in totals.items():
        assert engine == ENGINE_WIREGUARD
        out.setdefault(user, {})[epoch] = value
    return out


async def test_peer_counters_are_journalled_exactly_across_a_recreated_interface(wg_pair, tmp_path):
    a, b = wg_pair.a, wg_pair.b
    desired = desired_for(wg_pair)
    wg = WireGuard()
    sync = WgSync(wg, desired=desired)
    wg_pair.wg(b, "set", b.iface, "peer", a.public_key, "endpoint", a.endpoint,
               "allowed-ips", a.tunnel_cidr)  # fmt: skip
    await sync.sync_once()
    async with open_journal(tmp_path / "j.db") as journal:
        sampler = Sampler(journal, desired=lambda: desired, wg=wg)
        assert await ping(wg_pair, count=5, size=1000)
        report, seen = await sample_stable(wg_pair, sampler)
        r = report.engines[ENGINE_WIREGUARD]
        assert (r.epoch, r.new_epoch) == ("1", True)
        totals = totals_by_user(await journal.outbox_totals())
        assert totals == {"client-b": {"1": seen["client-b"]}, "client-a": {"1": seen["client-a"]}}
        assert seen["client-b"][0] > 5 * 1000

        # a is recreated (peers gone, counters from zero); b is not
        await trio.to_thread.run_sync(wg_pair.recreate, a)
        assert (await sync.sync_once()).added == 1
        assert await ping(wg_pair, count=3, deadline=30)  # b's stale session re-handshakes
        report, seen = await sample_stable(wg_pair, sampler)
        r = report.engines[ENGINE_WIREGUARD]
        assert (r.epoch, r.new_epoch) == ("2", True)
        totals = totals_by_user(await journal.outbox_totals())
        # fresh counters of the recreated interface: counted from zero
        assert totals["client-b"]["2"] == seen["client-b"]
        # carried baselines: b's cumulative counters are counted once over both epochs
        up = sum(v[0] for v in totals["client-a"].values())
        down = sum(v[1] for v in totals["client-a"].values())
        assert (up, down) == seen["client-a"]

        # a's device goes away: b is still sampled, a's baselines are kept
        assert a.proc is not None
        stop_process(a.proc)
        remove_socket(a.iface)
        before = await journal.baselines(ENGINE_WIREGUARD, "2")
        r = (await sampler.sample_once()).engines[ENGINE_WIREGUARD]
        assert r.committed and r.epoch == "2"
        kept = await journal.baselines(ENGINE_WIREGUARD, "2")
        rx_b_on_a = wg_counter(a.iface, b.public_key, "rx")
        assert kept[rx_b_on_a] == before[rx_b_on_a] == seen["client-b"][0]
