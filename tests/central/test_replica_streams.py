"""One stream per node across replicas (real PostgreSQL, two centrals serving in-process
over real mTLS): a node connecting to replica 2 ends its older stream on replica 1, and a
node revoked through one replica loses its stream on the other."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from edgeward.central.pg_storage import PgStorage
from edgeward.pki import authority
from tests.central.helpers import (
    PROXY_INBOUNDS,
    WAIT,
    make_pki,
    node_stream,
    running_central,
    write_pair,
)

ADMIN_CLI = [sys.executable, "-c", "from edgeward.cli import main; main()"]


@contextlib.asynccontextmanager
async def two_replicas(pki, dsn: str, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    storages = [await PgStorage.open(dsn, listen=True) for _ in range(2)]
    try:
        await storages[0].add_node("node-a", PROXY_INBOUNDS, actor="t")
        async with (
            running_central(pki, storages[0], tmp_path / "unused-1") as one,
            running_central(pki, storages[1], tmp_path / "unused-2") as two,
        ):
            yield one, two
    finally:
        for storage in storages:
            await storage.close()


async def ended_by_central(node) -> str:
    """The StreamError central sends when it ends the stream (other messages skipped)."""
    for _ in range(20):
        kind, body = await node.recv()
        if kind == "error":
            return body.code
    raise AssertionError("the stream was not ended")


def test_a_node_connecting_to_another_replica_ends_its_older_stream(
    tmp_path: Path, postgres_dsn: str
):
    pki = make_pki(tmp_path)
    cert = pki.node("node-a")

    async def main():
        async with (
            two_replicas(pki, postgres_dsn, tmp_path) as (one, two),
            node_stream(one, pki, cert) as old,
        ):
            await old.handshake()
            async with node_stream(two, pki, cert) as new:
                await new.handshake()
                code = await ended_by_central(old)
                await new.send(heartbeat={})  # the new stream still works
                assert await new.expect("heartbeat")
        return code

    assert asyncio.run(main()) == "shutting-down"


def test_a_node_revoked_through_one_replica_loses_its_stream_on_the_other(
    tmp_path: Path, postgres_dsn: str
):
    pki = make_pki(tmp_path)
    cert = pki.node("node-a")
    admin = write_pair(
        tmp_path / "admin", "admin",
        authority.issue_admin(pki.store, "admin-one", "admin", datetime.now(UTC)),
    )  # fmt: skip

    async def main():
        async with (
            two_replicas(pki, postgres_dsn, tmp_path) as (one, two),
            node_stream(one, pki, cert) as node,
        ):
            await node.handshake()
            revoke = await asyncio.create_subprocess_exec(
                *ADMIN_CLI, "--central", f"127.0.0.1:{two}", "--cert", str(admin.cert),
                "--key", str(admin.key), "--ca", str(pki.ca_file),
                "nodes", "revoke", "node-a", "--yes",
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(revoke.communicate(), WAIT)
            assert revoke.returncode == 0, output
            return await ended_by_central(node)

    assert asyncio.run(main()) == "shutting-down"
