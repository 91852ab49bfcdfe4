"""Exactly-once across a crash: central killed (SIGKILL) after commit, before the Ack."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgeward.proto.usage_codec import encode_usage
from tests.central.backends import StorageBackend
from tests.central.helpers import (
    PROXY_INBOUNDS,
    WAIT,
    central_config,
    config_toml,
    delta,
    make_pki,
    node_stream,
)
from tests.support.ports import free_port


class Child:
    def __init__(self, config: Path, *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.central.central_child", str(config), *flags],
            stdout=subprocess.PIPE,
            text=True,
        )

    def port(self) -> int:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"central child exited early ({self.process.wait(WAIT)})")
        return int(line)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()


def test_crash_between_commit_and_ack_then_replay_counts_exactly_once(
    tmp_path: Path, storage_backend: StorageBackend
):
    pki = make_pki(tmp_path)
    database = storage_backend.location  # the child opens it from the config
    config = tmp_path / "central.toml"
    config.write_text(config_toml(central_config(pki, database, port=free_port())))
    node_cert = pki.node("node-a")

    async def prepare():
        storage = await storage_backend.open()
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
        await storage.create_user("alice", actor="t", node_ids=["node-a"])
        await storage.close()

    async def usage_totals():
        storage = await storage_backend.open()
        user = await storage.get_user("alice")
        node = await storage.node_usage("node-a")
        await storage.close()
        return (user.uplink_bytes, user.downlink_bytes), node

    batch = [delta(seq, "alice", 10 * seq, 1) for seq in range(1, 6)]

    async def send_unacked(port: int):
        async with node_stream(port, pki, node_cert) as node:
            welcome, _ = await node.handshake("node-a")
            assert welcome.acked_seq == 0
            await node.send(usage=encode_usage(batch))
            with pytest.raises((EOFError, GRPCError, StreamTerminatedError, ConnectionError)):
                while True:
                    kind, _ = await node.recv()
                    assert kind != "ack", "central acknowledged although it died before the ack"

    async def reconnect(port: int):
        async with node_stream(port, pki, node_cert) as node:
            welcome, _ = await node.handshake("node-a")
            replayed = await node.usage(batch)  # the agent resends what was never acked
            following = await node.usage([delta(6, "alice", 1000, 0)])
        return welcome.acked_seq, replayed, following

    asyncio.run(prepare())
    crashing = Child(config, "--die-after-commit")
    try:
        asyncio.run(send_unacked(crashing.port()))
    finally:
        code = crashing.stop()
    assert code == -signal.SIGKILL
    if storage_backend.name == "sqlite":
        # The stream's batch was acked-to-be with its ledger row committed, folded later:
        # the kill left it unfolded, and opening the file folds it.
        conn = sqlite3.connect(database)
        try:
            left = conn.execute(
                "SELECT b.folded, u.uplink_bytes FROM usage_batches b, users u"
                " WHERE u.user_id = 'alice'"
            ).fetchall()
        finally:
            conn.close()
        assert left == [(0, 0)]
    committed = asyncio.run(usage_totals())
    assert committed == ((150, 5), (150, 5))  # the commit happened; only the ack was lost

    restarted = Child(config)
    try:
        acked_on_welcome, replayed, following = asyncio.run(reconnect(restarted.port()))
    finally:
        assert restarted.stop() == 0
    assert (acked_on_welcome, replayed, following) == (5, 5, 6)
    assert asyncio.run(usage_totals()) == ((1150, 5), (1150, 5))
