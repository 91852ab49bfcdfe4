"""central's database full under a node's batch (a real SQLITE_FULL from the real
SQLite: the file capped at its size): the stream refuses the batch unacknowledged
with the reason, nothing stored changes, and once there is room the node's replay
is counted exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpclib.const import Status

from edgeward.central.storage import SqliteStorage
from edgeward.proto.usage_codec import encode_usage
from tests.central.helpers import PROXY_INBOUNDS, delta, dump, make_pki, node_stream
from tests.central.helpers import running_central as central


def test_a_full_database_refuses_the_batch_unacked_and_keeps_everything(tmp_path: Path):
    database = tmp_path / "c.sqlite"
    big = [delta(seq, "alice", 1, 2) for seq in range(2, 3002)]  # needs new pages

    async def main():
        pki = make_pki(tmp_path)
        storage = await SqliteStorage.open(database)
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="test")
        await storage.create_user("alice", actor="test", node_ids=["node-a"])
        async with central(pki, storage, database) as port:
            async with node_stream(port, pki, pki.node("node-a")) as node:
                await node.handshake("node-a")
                acked = await node.usage([delta(1, "alice", 5, 5)])
                await storage.get_user("alice")  # folded: the state to keep
                before = dump(database)
                (pages,) = await storage._db.execute_fetchall("PRAGMA page_count")
                await storage._db.execute(f"PRAGMA max_page_count = {pages[0]}")
                await node.send(usage=encode_usage(big))
                refusal, status = await node.refusal()
            after = dump(database)
            await storage._db.execute("PRAGMA max_page_count = 1073741823")
            async with node_stream(port, pki, pki.node("node-a")) as node:
                welcome, _ = await node.handshake("node-a")
                replayed = await node.usage(big)
        alice = await storage.get_user("alice")
        await storage.close()
        return acked, refusal, status, before, after, welcome, replayed, alice

    acked, refusal, status, before, after, welcome, replayed, alice = asyncio.run(main())
    assert acked == 1
    assert status.status == Status.UNAVAILABLE
    assert refusal.message == (
        "central could not store usage seqs 2-3001 (database or disk is full);"
        " nothing was acknowledged: send them again later"
    )
    assert before == after
    assert welcome.acked_seq == 1
    assert replayed == 3001
    assert (alice.uplink_bytes, alice.downlink_bytes) == (5 + 3000, 5 + 6000)
