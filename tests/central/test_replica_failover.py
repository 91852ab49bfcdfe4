"""Exactly-once across replicas: a replica SIGKILLed after committing a batch and before
its Ack; the node reconnects to another replica (already running on the same
PostgreSQL), replays the unacknowledged batch and continues: nothing lost or doubled."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgeward.central.pg_storage import PgStorage
from edgeward.proto.usage_codec import encode_usage
from tests.central.helpers import (
    PROXY_INBOUNDS,
    central_config,
    config_toml,
    delta,
    make_pki,
    node_stream,
)
from tests.central.test_crash import Child
from tests.support.ports import free_port


def test_a_replica_dying_between_commit_and_ack_loses_and_doubles_nothing(
    tmp_path: Path, postgres_dsn: str
):
    pki = make_pki(tmp_path)
    configs = []
    for name in ("one", "two"):
        toml = config_toml(central_config(pki, Path("unused"), port=free_port()))
        configs.append(tmp_path / f"{name}.toml")
        configs[-1].write_text(toml.replace('"unused"', f'"{postgres_dsn}"'))
    node_cert = pki.node("node-a")
    batch = [delta(seq, "alice", 10 * seq, 1) for seq in range(1, 6)]

    async def prepare():
        storage = await PgStorage.open(postgres_dsn)
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
        await storage.create_user("alice", actor="t", node_ids=["node-a"])
        await storage.close()

    async def totals():
        conn = await asyncpg.connect(postgres_dsn)
        try:
            user = await conn.fetchrow(
                "SELECT uplink_bytes, downlink_bytes FROM users WHERE user_id = 'alice'"
            )
            node = await conn.fetchrow(
                "SELECT uplink_bytes, downlink_bytes, acked_seq FROM nodes WHERE node_id = 'node-a'"
            )
            ledger = await conn.fetchval("SELECT count(*) FROM deltas WHERE node_id = 'node-a'")
            return tuple(user), tuple(node), ledger
        finally:
            await conn.close()

    async def send_unacked(port: int):
        async with node_stream(port, pki, node_cert) as node:
            welcome, _ = await node.handshake("node-a")
            assert welcome.acked_seq == 0
            await node.send(usage=encode_usage(batch))
            with pytest.raises((EOFError, GRPCError, StreamTerminatedError, ConnectionError)):
                while True:
                    kind, _ = await node.recv()
                    assert kind != "ack", "the replica acknowledged although it died first"

    async def reconnect(port: int):
        async with node_stream(port, pki, node_cert) as node:
            welcome, _ = await node.handshake("node-a")
            replayed = await node.usage(batch)  # resent: the node never saw its ack
            following = await node.usage([delta(6, "alice", 1000, 0)])
        return welcome.acked_seq, replayed, following

    asyncio.run(prepare())
    dying = Child(configs[0], "--die-after-commit")
    other = Child(configs[1])
    try:
        dying_port, other_port = dying.port(), other.port()
        asyncio.run(send_unacked(dying_port))
        assert dying.stop() == -signal.SIGKILL
        assert asyncio.run(totals()) == ((150, 5), (150, 5, 5), 5)  # committed, not acked
        acked_on_welcome, replayed, following = asyncio.run(reconnect(other_port))
    finally:
        dying.stop()
        code = other.stop()
    assert code == 0
    assert (acked_on_welcome, replayed, following) == (5, 5, 6)
    assert asyncio.run(totals()) == ((1150, 5), (1150, 5, 6), 6)
