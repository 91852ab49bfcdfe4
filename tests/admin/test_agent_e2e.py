"""The admin surface with a real agent process and a real v2ray core: a user added with
the CLI is served (its link downloads), `explain` and `nodes health` see what the agent
reports, and `users reissue` replaces the credentials on the node (the old link stops
working, the new one works)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from tests.admin.fleet import Fleet, running_fleet
from tests.central.backends import StorageBackend
from tests.e2e.agent_process import AgentProcess
from tests.e2e.agent_setup import core_config, node_config
from tests.support.ports import free_port, wait_listening
from tests.support.v2ray import (
    BlobServer,
    FetchFailed,
    V2rayCore,
    _kill,
    _start_v2ray,
    fetch_through,
)

from .test_client_configs_real import client_config_from_link

WAIT = 30.0


@contextlib.contextmanager
def client_for(uri: str, workdir: Path, name: str) -> Iterator[int]:
    socks = free_port()
    process = _start_v2ray(client_config_from_link(uri, socks), workdir, name)
    try:
        wait_listening(socks)
        yield socks
    finally:
        _kill(process)


def downloads(socks: int, url: str) -> bool:
    try:
        return fetch_through(socks, url, timeout=3) > 0
    except FetchFailed:
        return False


def eventually(check, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def vless_uri(fleet: Fleet) -> str:
    [link] = fleet.json("users", "links", "alice", role="operator")["links"]
    return link["uri"]


def test_cli_changes_reach_a_real_agent_and_core(
    tmp_path: Path,
    storage_backend: StorageBackend,
    v2ray_core: V2rayCore,
    http_blob_server: BlobServer,
):
    url = http_blob_server.url(100_000)
    with running_fleet(tmp_path / "fleet", storage_backend) as fleet:
        port = v2ray_core.ports["vless-in"]
        fleet.ok("nodes", "add", "node-a", "--address", "127.0.0.1",
                 "--inbound", f"tag=vless-in,protocol=vless,port={port}")  # fmt: skip
        fleet.ok("users", "add", "alice", "--node", "node-a")
        config = core_config(
            node_config(tmp_path, fleet.pki, f"127.0.0.1:{fleet.port}", node_id="node-a"),
            v2ray_core,
        )
        agent = AgentProcess(config, tmp_path)
        try:
            old = vless_uri(fleet)
            with client_for(old, tmp_path, "old") as socks:
                eventually(lambda: downloads(socks, url), "the agent to serve alice")
                health = fleet.json("nodes", "health", "node-a", role="viewer")
                assert health["connected"] is True and health["version"]
                eventually(lambda: fleet.json("explain", "alice")["served"],
                           "explain to see alice applied")  # fmt: skip

                fleet.ok("users", "reissue", "alice")
                new = vless_uri(fleet)
                assert new != old
                eventually(lambda: not downloads(socks, url), "the old credential to go")
            with client_for(new, tmp_path, "new") as socks:
                eventually(lambda: downloads(socks, url), "the new credential to work")
        finally:
            agent.terminate()
