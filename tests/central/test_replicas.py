"""Two central replicas on one PostgreSQL, two nodes (issue 10's check), all real parts:
two `edgeward-central run` processes on loopback sharing one real PostgreSQL, two real
agents (`edgeward-agent run`), each with its own real v2ray core moving real bytes.

- An admin suspension made through replica 1 and an expiry decided by replica 1's
  enforcement ticker reach the node connected to replica 2, on its open stream: the
  users disappear from that node's core.
- Replica 1 is SIGKILLed while its node streams usage; the node moves on to replica 2
  (its [central] addresses) and central's totals end equal to the core's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from edgeward.central.pg_storage import PgStorage
from edgeward.pki import authority
from tests.central.helpers import Pair, make_pki, write_pair
from tests.conftest import require_binary
from tests.e2e.agent_process import AgentProcess
from tests.e2e.agent_setup import NODE_INBOUNDS, core_config, node_config
from tests.support.ports import free_port, wait_listening
from tests.support.rawcore import raw_query_stats
from tests.support.v2ray import (
    FetchFailed,
    V2rayCore,
    fetch_through,
    open_client,
    v2ray_binary,
)

WAIT = 30.0  # every wait below is bounded by this
ADMIN = "admin:tests"
CENTRAL = [sys.executable, "-c", "from edgeward.central.cli import main; main()"]
ADMIN_CLI = [sys.executable, "-c", "from edgeward.cli import main; main()"]
AGENT_CLI = [sys.executable, "-c", "from edgeward.agent.cli import main; main()"]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Replica:
    """One `edgeward-central run` process."""

    name: str
    config: Path
    port: int
    log: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*CENTRAL, "run", "--config", str(self.config)], stdout=log, stderr=log
            )
        wait_listening(self.port, WAIT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            finally:
                self.kill()
        return self.process.returncode


def replica_config(directory: Path, pki, dsn: str, port: int, enforce_seconds: float) -> Path:
    path = directory / f"central-{port}.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\ndatabase = "{dsn}"\n'
        f'[pki]\nca_dir = "{pki.dir}"\ncert = "{pki.server.cert}"\nkey = "{pki.server.key}"\n'
        f"[enforcement]\ninterval_seconds = {enforce_seconds}\n"
    )
    return path


class Traffic(threading.Thread):
    """Downloads through a client proxy until stopped (bounded in count)."""

    def __init__(self, socks_port: int, url: str) -> None:
        super().__init__(daemon=True)
        self.socks_port, self.url = socks_port, url
        self.moved = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        for _ in range(5000):
            if self.stopped.is_set():
                return
            with contextlib.suppress(FetchFailed):  # not applied yet
                self.moved += fetch_through(self.socks_port, self.url, 10.0)
            self.stopped.wait(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.join(WAIT)


async def _prepare(dsn: str) -> dict[str, str]:
    """The fleet in the shared database (migrated here): nodes and users; user -> uuid."""
    storage = await PgStorage.open(dsn)
    try:
        for node in ("node-a", "node-b"):
            await storage.add_node(node, NODE_INBOUNDS, actor=ADMIN)
        secrets = {}
        for user, node in (("alice", "node-a"), ("bob", "node-b"), ("carol", "node-b")):
            secrets[user] = (await storage.create_user(user, actor=ADMIN, node_ids=[node])).uuid
        return secrets
    finally:
        await storage.close()


def sql(dsn: str, query: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def running(*parts: Any) -> Iterator[None]:
    """Stop every part started (agents, replicas, cores) whatever happens."""
    try:
        yield
    finally:
        for part in reversed(parts):
            with contextlib.suppress(Exception):
                (part.stop if isinstance(part, Replica) else part.kill)()


def test_two_replicas_two_nodes_changes_cross_and_a_killed_replica_loses_nothing(
    tmp_path: Path, postgres_dsn: str, http_blob_server
):
    require_binary("v2ray", v2ray_binary())
    dsn = postgres_dsn
    secrets = asyncio.run(_prepare(dsn))
    pki = make_pki(tmp_path / "pki")
    admin = write_pair(
        tmp_path / "admin",
        "admin",
        authority.issue_admin(pki.store, "admin-one", "admin", datetime.now(UTC)),
    )
    one, two = (
        Replica(name, replica_config(tmp_path, pki, dsn, port, enforce), port,
                tmp_path / f"{name}.log")
        for name, port, enforce in (
            ("replica-1", free_port(), 0.3),
            # Replica 2 decides nothing on its own after its first pass (an hour away).
            ("replica-2", free_port(), 3600.0),
        )
    )  # fmt: skip
    cores = {node: V2rayCore(workdir=tmp_path / f"v2ray-{node}") for node in ("node-a", "node-b")}
    agents: dict[str, AgentProcess] = {}
    with running(*cores.values(), one, two):
        for core in cores.values():
            core.start()
        one.start()
        two.start()
        for node, first, second in (("node-a", one, two), ("node-b", two, one)):
            config = node_config(
                tmp_path, pki, first.address, node_id=node, sample_interval=0.3,
                addresses=[second.address],
            )  # fmt: skip
            config = core_config(config, cores[node])
            workdir = tmp_path / f"run-{node}"
            workdir.mkdir()
            agents[node] = AgentProcess(config, workdir)
        with running(*agents.values()):
            _changes_cross_replicas(
                tmp_path, one, two, admin, pki, cores, agents, secrets, dsn, http_blob_server
            )
            _a_killed_replica_loses_nothing(
                tmp_path, one, two, admin, pki, cores["node-a"], agents["node-a"], secrets, dsn,
                http_blob_server,
            )  # fmt: skip
            assert agents["node-a"].terminate() == 0, agents["node-a"].log
            assert agents["node-b"].terminate() == 0, agents["node-b"].log
        assert two.stop() == 0, two.log.read_text()


def admin_cli(replica: Replica, admin: Pair, pki, *args: str) -> str:
    result = subprocess.run(
        [*ADMIN_CLI, "--central", replica.address, "--cert", str(admin.cert),
         "--key", str(admin.key), "--ca", str(pki.ca_file), *args],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


def health(replica: Replica, admin: Pair, pki, node: str) -> dict:
    return json.loads(admin_cli(replica, admin, pki, "nodes", "health", node, "--json"))


def explain(agent: AgentProcess, user: str) -> dict:
    result = subprocess.run(
        [*AGENT_CLI, "explain", user, "--json", "--config", str(agent.config_path)],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def applied_to_core(agent: AgentProcess, user: str) -> bool:
    return any(explain(agent, user)["applied"].values())


def served_by_core(core: V2rayCore, workdir: Path, secret: str, url: str) -> bool:
    with open_client(workdir, core, "vless", secret) as client:
        try:
            return fetch_through(client.socks_port, url, 10.0) > 0
        except FetchFailed:
            return False


def _changes_cross_replicas(
    tmp_path, one, two, admin, pki, cores, agents, secrets, dsn, blob_server
):
    node_b = agents["node-b"]
    wait_until(lambda: health(two, admin, pki, "node-b")["connected"], "node-b on replica 2")
    wait_until(lambda: health(one, admin, pki, "node-a")["connected"], "node-a on replica 1")
    assert f"connected to central {two.address} as node-b" in node_b.log
    assert f"connected to central {one.address} as node-a" in agents["node-a"].log
    # Either replica answers for either node (node links are shared through the database).
    wait_until(lambda: health(one, admin, pki, "node-b")["connected"], "node-b from replica 1")
    wait_until(lambda: health(two, admin, pki, "node-a")["connected"], "node-a from replica 2")
    assert health(one, admin, pki, "node-b")["version"]
    for user in ("bob", "carol"):
        wait_until(lambda user=user: applied_to_core(node_b, user), f"{user} on node-b's core")
    url = blob_server.url(1000)
    assert served_by_core(cores["node-b"], tmp_path, secrets["bob"], url)

    # An admin change made through replica 1.
    admin_cli(one, admin, pki, "users", "suspend", "bob", "--why", "replicas test")
    wait_until(lambda: not applied_to_core(node_b, "bob"), "bob gone from node-b's core")
    assert not served_by_core(cores["node-b"], tmp_path, secrets["bob"], url)
    # An enforcement decision only replica 1 makes: carol's expiry passes (written as
    # time passing would, without a change of desired state); replica 1's ticker decides.
    expired = sql(
        dsn,
        "UPDATE users SET expires_at_ms = $1 WHERE user_id = 'carol' RETURNING expires_at_ms",
        int(time.time() * 1000) - 1,
    )
    assert expired
    wait_until(lambda: not applied_to_core(node_b, "carol"), "carol gone from node-b's core")
    assert explain(node_b, "carol")["desired"]["suspended"]
    assert sql(dsn, "SELECT reason FROM audit_log WHERE subject = 'carol' AND action = 'suspend'")
    # Both reached node-b on the stream it already had: it never reconnected.
    assert node_b.log.count("connected to central") == 1, node_b.log


def _a_killed_replica_loses_nothing(
    tmp_path, one, two, admin, pki, core, agent, secrets, dsn, blob_server
):
    def central_total() -> int:
        return sql(dsn, "SELECT uplink_bytes + downlink_bytes FROM users WHERE user_id = 'alice'")

    with open_client(tmp_path, core, "vless", secrets["alice"]) as client:
        traffic = Traffic(client.socks_port, blob_server.url(200_000))
        traffic.start()
        try:
            wait_until(lambda: central_total() > 0, "alice's first usage acked by replica 1")
            one.kill()  # SIGKILL while node-a streams usage to it
            before = central_total()
            wait_until(
                lambda: agent.log.count(f"connected to central {two.address} as node-a"),
                "node-a on replica 2",
            )
            wait_until(lambda: central_total() > before, "usage ingested by replica 2")
        finally:
            traffic.stop()
    counted = sum(raw_query_stats(core.api_port, "user>>>alice>>>traffic").values())
    wait_until(lambda: central_total() == counted, f"central's total == the core's {counted}")
    status = json.loads(
        subprocess.run(
            [*AGENT_CLI, "status", "--json", "--config", str(agent.config_path)],
            capture_output=True, text=True, timeout=WAIT, check=True,
        ).stdout
    )  # fmt: skip
    acked = sql(dsn, "SELECT acked_seq FROM nodes WHERE node_id = 'node-a'")
    assert status["journal_acked_seq"] == status["journal_head_seq"] == acked
    assert sql(dsn, "SELECT count(*) FROM deltas WHERE node_id = 'node-a'") > 0
    assert counted >= traffic.moved > 0
    # Replica 2 took over node-a's link state (the killed replica's row is overwritten).
    moved = health(two, admin, pki, "node-a")
    assert moved["connected"] and moved["acked_seq"] == acked, moved
