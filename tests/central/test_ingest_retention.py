"""Retention of the raw usage ledger (prune_ledger, issue 10 §3), on both backends:
pruned seqs stay seen, so a replay of a pruned batch adds nothing."""

from __future__ import annotations

import asyncio

import pytest

from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta

DAY_MS = 86_400_000


def old_and_new(seqs, at_ms: int, user: str = "alice"):
    return [delta(seq, user, 10, 100, at_ms=at_ms) for seq in seqs]


async def ingested(storage) -> None:
    await storage.add_node("node-a", PROXY_INBOUNDS, actor="test")
    await storage.create_user("alice", actor="test", node_ids=["node-a"])
    await storage.ingest("node-a", old_and_new(range(1, 11), DAY_MS), at_ms=DAY_MS)
    await storage.ingest("node-a", old_and_new(range(11, 21), 3 * DAY_MS), at_ms=3 * DAY_MS)


async def totals(storage) -> tuple:
    user = await storage.get_user("alice")
    return (
        user.uplink_bytes,
        user.downlink_bytes,
        await storage.node_usage("node-a"),
        await storage.hourly_usage("alice"),
        await storage.acked_seq("node-a"),
    )


def test_a_replay_of_pruned_deltas_is_still_seen_and_adds_nothing(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await storage_backend.open()
        await ingested(storage)
        before = await totals(storage)
        pruned = await storage.prune_ledger(2 * DAY_MS)
        replay = await storage.ingest("node-a", old_and_new(range(1, 11), DAY_MS), at_ms=4 * DAY_MS)
        # Straddling the floor: 8-10 pruned, 11-20 still in the ledger, 21-25 new.
        straddle = await storage.ingest(
            "node-a", old_and_new(range(8, 26), 3 * DAY_MS), at_ms=4 * DAY_MS
        )
        after = await totals(storage)
        pruned_again = await storage.prune_ledger(2 * DAY_MS)
        await storage.close()
        return before, pruned, replay, straddle, after, pruned_again

    before, pruned, replay, straddle, after, pruned_again = asyncio.run(main())
    assert before[:2] == (200, 2000)
    assert pruned == 10
    assert (replay.applied, replay.duplicates, replay.acked_seq) == (0, 10, 20)
    assert (straddle.applied, straddle.duplicates, straddle.acked_seq) == (5, 13, 25)
    assert after[:2] == (250, 2500)
    assert after[2] == (250, 2500)
    assert after[4] == 25
    assert pruned_again == 0


def test_pruning_keeps_newer_ledger_data_and_every_total(storage_backend: StorageBackend):
    async def main():
        storage = await storage_backend.open()
        await ingested(storage)
        before = await totals(storage)
        nothing = await storage.prune_ledger(DAY_MS)  # strictly before: the first batch stays
        everything = await storage.prune_ledger(10 * DAY_MS)
        after = await totals(storage)
        replay = await storage.ingest("node-a", old_and_new(range(5, 21), 3 * DAY_MS))
        await storage.close()
        return before, nothing, everything, after, replay

    before, nothing, everything, after, replay = asyncio.run(main())
    assert nothing == 0
    assert everything == 20
    assert after == before
    assert (replay.applied, replay.duplicates) == (0, 16)


@pytest.mark.parametrize("bad", [-1, "yesterday", None, 1.5])
def test_a_bad_cutoff_is_refused_and_changes_nothing(storage_backend: StorageBackend, bad):
    async def main():
        storage = await storage_backend.open()
        await ingested(storage)
        dump_before = await storage_backend.dump()
        with pytest.raises(ValueError, match="before_ms"):
            await storage.prune_ledger(bad)
        dump_after = await storage_backend.dump()
        await storage.close()
        return dump_before, dump_after

    dump_before, dump_after = asyncio.run(main())
    assert dump_after == dump_before
