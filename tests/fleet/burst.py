"""The issuance burst: users created at a steady rate through central's
AdminService while traffic flows; each (user, node) pair is probed with a real
VLESS connection until the node serves it.

    .venv/bin/python -m tests.fleet.burst [--rate 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import statistics
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.client import Channel

from edgeward.devfleet import vless
from edgeward.devfleet.admin import user_secrets
from edgeward.devfleet.corestats import read_core
from edgeward.devfleet.fleet import Fleet
from edgeward.devfleet.layout import BLOB_PORT, CENTRAL_PORT, make_layout
from edgeward.devfleet.nodes import agent_status
from edgeward.devfleet.traffic import Flow, Traffic
from edgeward.pki.tls import client_context
from edgeward.proto import v1

PROBE_THREADS = 6
ISSUERS = 4  # AddUser requests in flight at once
PROBE_RETRY = 0.2  # seconds between two probes of a pair that was not served yet
# Latency is measured on every 10th user while the burst runs (probing all of them
# every 0.2 s would load the cores more than the burst does); every pair of every
# user is then checked with a real connection after the last issue.
SAMPLE_EVERY = 10
SERVE_DEADLINE = 90.0  # after the last issue, every pair must be served by then
TRAFFIC_USERS = ("t1", "t2")


@dataclass
class Pair:
    user: str
    uuid: str
    node: int
    issued: float  # monotonic time the AddUser request was sent
    served: float | None = None


@dataclass
class BurstResult:
    issued: int
    pairs: list[Pair]
    issue_seconds: float
    core_pids_before: dict[str, int]
    core_pids_after: dict[str, int]
    uptimes_before: dict[str, int]
    uptimes_after: dict[str, int]
    epochs_before: dict[str, str]
    epochs_after: dict[str, str]
    errors: list[str] = field(default_factory=list)

    @property
    def served(self) -> int:
        return sum(p.served is not None for p in self.pairs)

    def latencies(self) -> list[float]:
        """issue->served of the sampled users (probed from the moment they were issued)."""
        return sorted(
            p.served - p.issued
            for p in self.pairs
            if p.served is not None and int(p.user[1:]) % SAMPLE_EVERY == 0
        )

    def percentile(self, q: float) -> float:
        lat = self.latencies()
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    def line(self) -> str:
        lat = self.latencies()
        return (
            f"burst: {self.issued} users issued in {self.issue_seconds:.1f} s"
            f" ({self.issued / max(self.issue_seconds, 1e-9):.1f}/s), {self.served}/"
            f"{len(self.pairs)} user-node pairs served, issue->served p50"
            f" {statistics.median(lat) if lat else float('nan'):.2f} s,"
            f" p99 {self.percentile(0.99):.2f} s, core restarts {self.core_restarts}"
        )

    @property
    def core_restarts(self) -> int:
        return sum(
            self.core_pids_before[n] != self.core_pids_after.get(n)
            or self.uptimes_after.get(n, -1) < self.uptimes_before[n]
            or self.epochs_after.get(n) != self.epochs_before[n]
            for n in self.core_pids_before
        )


class Prober:
    """Probe pairs until served; a heap of (next probe time, pair index)."""

    def __init__(self, fleet: Fleet, pairs: list[Pair]) -> None:
        self.fleet = fleet
        self.pairs = pairs
        self.heap: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, daemon=True)
                        for _ in range(PROBE_THREADS)]  # fmt: skip

    def add(self, index: int) -> None:
        with self.cond:
            heapq.heappush(self.heap, (time.monotonic(), index))
            self.cond.notify()

    def _work(self) -> None:
        layout = self.fleet.layout
        target = (layout.blob_address, BLOB_PORT)
        while not self.stop.is_set():
            with self.cond:
                if not self.heap:
                    self.cond.wait(0.1)
                    continue
                due, index = self.heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.cond.wait(min(wait, 0.1))
                    continue
                heapq.heappop(self.heap)
            pair = self.pairs[index]
            node = layout.nodes[pair.node]
            started = time.monotonic()
            try:
                vless.fetch(node.inbound("vless-in"), pair.uuid, target, "/blob/1", timeout=3)
                pair.served = started
            except (vless.NotServed, OSError):
                with self.cond:
                    heapq.heappush(self.heap, (started + PROBE_RETRY, index))

    def pending(self) -> int:
        return sum(p.served is None for p in self.pairs)


async def _issue(fleet: Fleet, rate: float, seconds: float, prober: Prober, pairs: list[Pair]):
    layout = fleet.layout
    ssl = client_context(layout.pki_dir / "ca.crt", layout.central_dir / "admin.crt",
                         layout.central_dir / "admin.key")  # fmt: skip
    channel = Channel(layout.central_address, CENTRAL_PORT, ssl=ssl)
    stub = v1.AdminServiceStub(channel, timeout=30)
    node_ids = [n.node_id for n in layout.nodes]
    count = int(rate * seconds)
    start = time.monotonic()
    next_index = iter(range(count))

    async def issuer() -> None:
        # Several requests in flight, each user at its own slot: the pace holds even
        # when one AddUser takes longer than 1/rate.
        for i in next_index:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user, uuid = f"b{i:05d}", str(uuidlib.uuid4())
            issued = time.monotonic()
            await stub.add_user(v1.AddUserRequest(user_id=user, plan_id="unlimited",
                                                  node_ids=node_ids, uuid=uuid))  # fmt: skip
            for n in range(len(node_ids)):
                pairs.append(Pair(user, uuid, n, issued))
                if i % SAMPLE_EVERY == 0:
                    prober.add(len(pairs) - 1)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(ISSUERS):
                group.create_task(issuer())
    finally:
        channel.close()
        await asyncio.sleep(0.05)
    return count, time.monotonic() - start


def observe(fleet: Fleet) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    pids, uptimes, epochs = {}, {}, {}
    for node in fleet.layout.nodes:
        handle = fleet.procs.get(f"core-{node.node_id}")
        pids[node.node_id] = handle.pid if handle and handle.alive() else -1
        uptimes[node.node_id] = read_core(node.ns).uptime
        status = None
        for _ in range(10):  # the status call itself may time out on a loaded machine
            status = agent_status(node)
            if status is not None:
                break
            time.sleep(1.0)
        epochs[node.node_id] = str((status or {}).get("epoch"))
    return pids, uptimes, epochs


def run_burst(workdir: Path, *, rate: float, seconds: float, name: str = "ewb",
              subnet: int = 80, say=print) -> BurstResult:  # fmt: skip
    fleet = Fleet(make_layout(workdir, name=name, subnet=subnet), sample_interval=2.0)
    traffic: Traffic | None = None
    prober: Prober | None = None
    try:
        fleet.up(agents=False)
        fleet.admin.add_plan("unlimited", None, None)
        node_ids = [n.node_id for n in fleet.layout.nodes]
        for user in TRAFFIC_USERS:
            fleet.admin.add_user(user, "unlimited", node_ids)
        fleet.start_agents()
        secrets_ = {u: user_secrets(fleet.layout.central_db, u) for u in TRAFFIC_USERS}
        flows = [Flow(n.node_id, n.inbound("vless-in"), u, secrets_[u].uuid)
                 for n in fleet.layout.nodes for u in TRAFFIC_USERS]  # fmt: skip
        traffic = Traffic(flows, (fleet.layout.blob_address, BLOB_PORT), seed=1)
        traffic.start()
        before = _settled_observation(fleet)
        pairs: list[Pair] = []
        prober = Prober(fleet, pairs)
        for thread in prober.threads:
            thread.start()
        say(f"burst: issuing {int(rate * seconds)} users at {rate}/s while traffic flows")
        progress = threading.Thread(target=_progress, args=(fleet, pairs, prober, say),
                                    daemon=True)  # fmt: skip
        progress.start()
        issued, issue_seconds = asyncio.run(_issue(fleet, rate, seconds, prober, pairs))
        for index, pair in enumerate(pairs):
            if int(pair.user[1:]) % SAMPLE_EVERY:
                prober.add(index)  # the rest: served-or-not, with a real connection each
        deadline = time.monotonic() + SERVE_DEADLINE
        while prober.pending() and time.monotonic() < deadline:
            time.sleep(0.5)
        after = observe(fleet)
        result = BurstResult(issued, pairs, issue_seconds, before[0], after[0], before[1],
                             after[1], before[2], after[2])  # fmt: skip
    finally:
        if prober is not None:
            prober.stop.set()
            for thread in prober.threads:
                thread.join(10)
        if traffic is not None:
            traffic.stop()
        fleet.down()
    say(result.line())
    return result


def _progress(fleet: Fleet, pairs: list[Pair], prober: Prober, say) -> None:
    """Every 10 s: issued, served, and what each agent says it holds."""
    while not prober.stop.wait(10.0):
        agents = []
        for node in fleet.layout.nodes:
            s = agent_status(node) or {}
            agents.append(f"{node.node_id} desired {s.get('users_desired')}"
                          f" applied {s.get('users_applied')}")  # fmt: skip
        served = sum(p.served is not None for p in pairs)
        say(f"  issued {len(pairs) // 2}, pairs served {served}/{len(pairs)}; {'; '.join(agents)}")


def _settled_observation(fleet: Fleet, timeout: float = 30.0):
    """Wait until each agent reports its core epoch (it has seen the core), then observe."""
    deadline = time.monotonic() + timeout
    while True:
        observation = observe(fleet)
        if all(e not in ("None", "") for e in observation[2].values()):
            return observation
        if time.monotonic() > deadline:
            raise TimeoutError(f"agents report no core epoch: {observation[2]}")
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="issuance burst on a local fleet")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeward-burst-") as tmp:
        result = run_burst(Path(tmp), rate=args.rate, seconds=args.seconds)
    return 0 if result.served == len(result.pairs) and result.core_restarts == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
