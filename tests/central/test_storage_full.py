"""central's database full: under a node's batch (a real SQLITE_FULL from the real
SQLite, the file capped at its size) the stream refuses the batch unacknowledged
with the reason, nothing stored changes, and once there is room the node's replay
is counted exactly once; under an admin call (a real full disk: a small tmpfs)
the call fails with the reason and nothing changes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from edgeward.admin_client import EXIT_UNREACHABLE
from edgeward.central.storage import SqliteStorage
from edgeward.proto.usage_codec import encode_usage
from tests.admin.fleet import running_fleet
from tests.central.backends import StorageBackend
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs of the test's own (root), unmounted after."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(disk: Path) -> Path:
    """Take every free block of the disk with one file; returns it."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            for _ in range(4 * 16 + 16):  # 4 MiB in 64 KiB chunks, and then some
                out.write(chunk)
                out.flush()
    assert shutil.disk_usage(disk).free < 65536
    return filler


def test_admin_calls_on_a_full_disk_fail_with_the_reason_and_change_nothing(
    tmp_path: Path, small_disk: Path
):
    backend = StorageBackend("sqlite", small_disk / "central.sqlite")
    with running_fleet(tmp_path, backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", "vpn1.example.com",
                 "--inbound", "tag=vless-in,protocol=vless,port=443")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "n1")
        before = fleet.dump()
        filler = fill(small_disk)
        # A reason long enough that SQLite must grow the file or its WAL.
        why = "x" * 400_000
        result = fleet.cli("users", "add", "bob", "--node", "n1", "--why", why)
        assert result.exit_code == EXIT_UNREACHABLE, result.output
        assert result.output.startswith(
            "Error: central's storage failed (database or disk is full):"
            " the call did not complete, try again later"
        ), result.output
        assert fleet.dump() == before
        filler.unlink()
        fleet.ok("users", "add", "bob", "--node", "n1", "--why", why)
        assert [u["user_id"] for u in fleet.json("users", "list")] == ["alice", "bob"]
