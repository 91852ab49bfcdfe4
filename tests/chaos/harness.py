"""The chaos harness: a real fleet, real traffic, seeded faults, exact accounting.

    .venv/bin/python -m tests.chaos.harness [--seed N] [--faults N] [--long]

(the CI test runs the same `run_chaos`). Prints one summary line: events
injected, bytes expected (the cores' own counters), bytes counted (central),
difference; bytes a core lost by dying between two samples are measured and
reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeward.central.sqlite_ingest import ledger_rows
from edgeward.devfleet import netns, vless
from edgeward.devfleet.admin import user_secrets
from edgeward.devfleet.corestats import CoreReading, read_core
from edgeward.devfleet.fleet import Fleet
from edgeward.devfleet.layout import BLOB_PORT, NodeLayout, make_layout
from edgeward.devfleet.nodes import agent_status, start_core
from edgeward.devfleet.traffic import Flow, Traffic

from .ledger import LedgerRow, Run, Verdict, judge, summary_line
from .replay import replay
from .schedule import Fault, plan_faults

USERS = ("u1", "u2", "u3", "u4")
SERVE_WAIT = 60.0
SETTLE_WAIT = 60.0  # after traffic stops: agents sample and send everything
QUIET_WAIT = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class NodeRuns:
    """The core runs of one node: closed runs, and the start of the current one."""

    node: NodeLayout
    closed: list[Run] = field(default_factory=list)
    current_start_ms: int = 0


def quiet_reading(node: NodeLayout, timeout: float = QUIET_WAIT) -> CoreReading:
    """Two equal readings in a row (nothing in flight moved a counter between them)."""
    deadline = time.monotonic() + timeout
    previous = read_core(node.ns)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        reading = read_core(node.ns)
        if reading.users == previous.users:
            return reading
        previous = reading
    raise TimeoutError(f"{node.node_id}: core counters still moving after {timeout}s")


def wait_served(fleet: Fleet, uuid: str, node: NodeLayout, timeout: float) -> bool:
    target = (fleet.layout.blob_address, BLOB_PORT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(vless.NotServed, OSError):
            vless.fetch(node.inbound("vless-in"), uuid, target, "/blob/1", timeout=3)
            return True
        time.sleep(0.2)
    return False


def read_ledger(database: Path) -> tuple[list[LedgerRow], dict[str, tuple[int, int]]]:
    """central's proxy deltas per (node, epoch, user) and its per-user totals."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        groups: dict[tuple[str, str, str], list[int]] = {}
        for node, _, user, engine, epoch, up, down, at, counted in ledger_rows(db):
            if not counted or engine != 1:
                continue
            group = groups.setdefault((node, epoch, user), [0, 0, at, at])
            group[0] += up
            group[1] += down
            group[2], group[3] = min(group[2], at), max(group[3], at)
        rows = sorted((*key, *sums) for key, sums in groups.items())
        totals = db.execute("SELECT user_id, uplink_bytes, downlink_bytes FROM users").fetchall()
    return [LedgerRow(*row) for row in rows], {u: (up, down) for u, up, down in totals}


class Chaos:
    def __init__(self, fleet: Fleet, seed: int, say: Callable[[str], None]) -> None:
        self.fleet = fleet
        self.seed = seed
        self.say = say
        self.runs = {n.node_id: NodeRuns(n) for n in fleet.layout.nodes}
        self.events = 0
        self.traffic: Traffic | None = None
        self.central_kills = 0
        self.replayed = 0  # deltas sent a second time by replay faults
        self.faults_done: dict[str, int] = {}

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        fleet = self.fleet
        start = now_ms()
        fleet.up(agents=False)
        for runs in self.runs.values():
            runs.current_start_ms = start
        fleet.admin.add_plan("unlimited", None, None)
        node_ids = [n.node_id for n in fleet.layout.nodes]
        for user in USERS:
            fleet.admin.add_user(user, "unlimited", node_ids)
        fleet.start_agents()
        secrets_ = {u: user_secrets(fleet.layout.central_db, u) for u in USERS}
        for node in fleet.layout.nodes:
            for user in USERS:
                if not wait_served(fleet, secrets_[user].uuid, node, SERVE_WAIT):
                    raise AssertionError(f"{user} not served on {node.node_id} after setup")
        flows = [
            Flow(node.node_id, node.inbound("vless-in"), user, secrets_[user].uuid)
            for node in fleet.layout.nodes
            for user in USERS
        ]
        target = (fleet.layout.blob_address, BLOB_PORT)
        self.traffic = Traffic(flows, target, seed=self.seed)
        self.traffic.start()

    # ------------------------------------------------------------ faults

    def inject(self, fault: Fault) -> None:
        fleet = self.fleet
        node = fleet.layout.nodes[fault.node % len(fleet.layout.nodes)]
        time.sleep(fault.gap)
        self.events += 1
        if fault.kind == "agent-kill":
            fleet.kill_agent(node)
            time.sleep(fault.hold)
            fleet.start_agent(node)
        elif fault.kind == "core-restart":
            self.restart_core(node)
        elif fault.kind == "central-restart":
            # Alternate a crash and a graceful stop.
            if self.central_kills % 2 == 0:
                fleet.kill_central()
            else:
                fleet.stop_central()
            self.central_kills += 1
            time.sleep(fault.hold)
            fleet.start_central()
        elif fault.kind == "link-cut":
            netns.cut_central(fleet.layout, node)
            time.sleep(fault.hold)
            netns.restore_central(fleet.layout, node)
        elif fault.kind == "link-down":
            netns.link_down(node)
            time.sleep(fault.hold)
            netns.link_up(node)
        elif fault.kind == "replay":
            self.replayed += replay(fleet.layout, node)[0]
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")
        self.faults_done[fault.kind] = self.faults_done.get(fault.kind, 0) + 1

    @property
    def core_runs_closed(self) -> int:
        return sum(len(runs.closed) for runs in self.runs.values())

    def restart_core(self, node: NodeLayout) -> None:
        """Quiet reading of the run, SIGKILL, a new run; traffic resumes after."""
        assert self.traffic is not None
        runs = self.runs[node.node_id]
        self.traffic.pause(node.node_id)
        try:
            reading = quiet_reading(node)
            self.fleet.procs.kill(f"core-{node.node_id}")
            ended = now_ms()
            runs.closed.append(Run(node.node_id, runs.current_start_ms, ended, reading.users, True))
            runs.current_start_ms = ended
            start_core(self.fleet.procs, node)
        finally:
            self.traffic.resume(node.node_id)

    # ------------------------------------------------------------ the end

    def finish(self) -> Verdict:
        """Stop traffic, read every core quietly, wait (bounded) for central to have it all."""
        assert self.traffic is not None
        self.traffic.stop()
        runs: list[Run] = []
        for node_runs in self.runs.values():
            final = quiet_reading(node_runs.node)
            runs += node_runs.closed
            runs.append(Run(node_runs.node.node_id, node_runs.current_start_ms, None,
                            final.users, False))  # fmt: skip
        deadline = time.monotonic() + SETTLE_WAIT
        while True:
            verdict = judge(runs, *read_ledger(self.fleet.layout.central_db))
            if verdict.exact or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for node in self.fleet.layout.nodes:
            if not self.fleet.procs.alive(f"agent-{node.node_id}"):
                verdict.problems.append(f"the agent of {node.node_id} is not running at the end")
        if not verdict.exact:
            self.diagnose()
        return verdict

    def diagnose(self) -> None:
        """What the agents say and their last log lines (the fleet is removed after)."""
        for node in self.fleet.layout.nodes:
            self.say(f"--- {node.node_id}: status {agent_status(node)}")
            self.say(self.fleet.procs.tail(f"agent-{node.node_id}", 3000))


def run_chaos(
    workdir: Path, *, seed: int, faults: int, say: Callable[[str], None] = print,
    name: str = "ewc", subnet: int = 79,
) -> tuple[int, Verdict, Chaos]:  # fmt: skip
    layout = make_layout(workdir, name=name, subnet=subnet)
    fleet = Fleet(layout, sample_interval=0.5, say=lambda _t: None)
    chaos = Chaos(fleet, seed, say)
    schedule = plan_faults(seed, faults, len(layout.nodes))
    try:
        chaos.setup()
        say(f"chaos: seed {seed}, {len(schedule)} faults planned")
        for i, fault in enumerate(schedule, 1):
            chaos.inject(fault)
            where = "central" if fault.kind == "central-restart" else f"node-{fault.node + 1}"
            say(f"  [{i}/{len(schedule)}] {fault.kind} on {where} (hold {fault.hold}s)")
        verdict = chaos.finish()
    finally:
        if chaos.traffic is not None:
            with contextlib.suppress(TimeoutError):
                chaos.traffic.stop()
        left = fleet.down()
        if left:
            say(f"chaos: could not remove {left}")
    say(summary_line(chaos.events, verdict))
    return chaos.events, verdict, chaos


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", type=int, default=None)
    parser.add_argument("--long", action="store_true", help="200 faults instead of 24")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    faults = args.faults or (200 if args.long else 24)
    with tempfile.TemporaryDirectory(prefix="edgeward-chaos-") as tmp:
        _events, verdict, _chaos = run_chaos(Path(tmp), seed=seed, faults=faults)
    for problem in verdict.problems[:20]:
        print(f"  problem: {problem}")
    return 0 if verdict.exact else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
