"""Issue->served and quota->suspended latency on a local fleet (real everything).

A fleet of central plus two nodes (edgeward.devfleet) on this machine; in the
same run:

- issue->served: users created one by one through central's AdminService, each
  probed with a real VLESS connection on both nodes every 50 ms until served;
  baseline: the same user added straight to a node's core (AlterInbound from
  inside its namespace) and probed the same way -- what edgeward adds on top
  of talking to the core directly;
- quota->suspended: a user with a 4 MiB limit downloads 256 KiB blobs through
  node-1; from the moment the bytes moved cross the limit to the first refused
  connection; baseline: the agent's sample interval (1 s), the shortest time
  in which the node can even see the crossing.

    .venv/bin/python bench/fleet_latency.py [--users 40] [--suspensions 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.client import Channel

from edgeward.devfleet import vless
from edgeward.devfleet.fleet import Fleet, missing_requirements
from edgeward.devfleet.layout import BLOB_PORT, CENTRAL_PORT, NodeLayout, make_layout
from edgeward.devfleet.netns import call_in_netns
from edgeward.pki.tls import client_context
from edgeward.proto import v1
from tests.support.rawcore import raw_add_vless

SAMPLE_INTERVAL = 1.0
PROBE_EVERY = 0.05
WAIT = 60.0
LIMIT = 4 << 20


def served_after(node: NodeLayout, target: tuple[str, int], uuid: str, since: float) -> float:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        probe = time.monotonic()
        with contextlib.suppress(vless.NotServed, OSError):
            vless.fetch(node.inbound("vless-in"), uuid, target, "/blob/1", timeout=3)
            return probe - since
        time.sleep(PROBE_EVERY)
    raise TimeoutError(f"not served on {node.node_id} after {WAIT}s")


def stub_for(fleet: Fleet) -> tuple[Channel, v1.AdminServiceStub]:
    layout = fleet.layout
    ssl = client_context(layout.pki_dir / "ca.crt", layout.central_dir / "admin.crt",
                         layout.central_dir / "admin.key")  # fmt: skip
    channel = Channel(layout.central_address, CENTRAL_PORT, ssl=ssl)
    return channel, v1.AdminServiceStub(channel, timeout=30)


async def add_user(fleet: Fleet, user: str, uuid: str, plan: str) -> None:
    channel, stub = stub_for(fleet)
    try:
        node_ids = [n.node_id for n in fleet.layout.nodes]
        await stub.add_user(v1.AddUserRequest(user_id=user, plan_id=plan, node_ids=node_ids,
                                              uuid=uuid))  # fmt: skip
    finally:
        channel.close()
        await asyncio.sleep(0.05)


def issue_latencies(fleet: Fleet, users: int) -> tuple[list[float], list[float]]:
    layout = fleet.layout
    target = (layout.blob_address, BLOB_PORT)
    edgeward, bare = [], []
    for i in range(users):
        uuid = str(uuidlib.uuid4())
        issued = time.monotonic()
        asyncio.run(add_user(fleet, f"lat{i:04d}", uuid, "unlimited"))
        edgeward += [served_after(node, target, uuid, issued) for node in layout.nodes]
        node = layout.nodes[i % len(layout.nodes)]
        raw_uuid = str(uuidlib.uuid4())
        added = time.monotonic()
        call_in_netns(node.ns, functools.partial(raw_add_vless, 10085, "vless-in",
                                                 f"raw{i:04d}", raw_uuid))  # fmt: skip
        bare.append(served_after(node, target, raw_uuid, added))
    return edgeward, bare


def suspension_latency(fleet: Fleet, index: int) -> float:
    layout = fleet.layout
    node = layout.nodes[0]
    target = (layout.blob_address, BLOB_PORT)
    uuid = str(uuidlib.uuid4())
    asyncio.run(add_user(fleet, f"quota{index}", uuid, "small"))
    served_after(node, target, uuid, time.monotonic())
    moved, crossed = 0, None
    path = f"/blob/{256 << 10}"
    request = len(vless.http_get(*target, path))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            moved += vless.fetch(node.inbound("vless-in"), uuid, target, path, timeout=5) + request
        except (vless.NotServed, OSError):
            if crossed is None:
                raise RuntimeError("refused before the limit was crossed") from None
            return time.monotonic() - crossed
        if crossed is None and moved >= LIMIT:
            crossed = time.monotonic()
    raise TimeoutError(f"still served {WAIT}s after crossing the limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--suspensions", type=int, default=3)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        sys.exit(f"fleet_latency: {reason}")
    with tempfile.TemporaryDirectory(prefix="edgeward-bench-fleet-") as tmp:
        fleet = Fleet(make_layout(Path(tmp), name="ewl", subnet=82),
                      sample_interval=SAMPLE_INTERVAL)  # fmt: skip
        try:
            fleet.up()
            fleet.admin.add_plan("unlimited", None, None)
            fleet.admin.add_plan("small", LIMIT, None)
            edgeward, bare = issue_latencies(fleet, args.users)
            suspensions = [suspension_latency(fleet, i) for i in range(args.suspensions)]
        finally:
            fleet.down()
    e50, b50 = statistics.median(edgeward), statistics.median(bare)
    e99 = sorted(edgeward)[min(len(edgeward) - 1, int(0.99 * len(edgeward)))]
    s50 = statistics.median(suspensions)
    print(f"issue->served ({args.users} users x 2 nodes): p50 {e50 * 1000:.0f} ms,"
          f" p99 {e99 * 1000:.0f} ms")  # fmt: skip
    print(f"bare core add->served:            p50 {b50 * 1000:.0f} ms")
    print(f"ratio issue->served / bare add:   {e50 / b50:.1f}x")
    print(f"quota->suspended ({args.suspensions} users, {LIMIT >> 20} MiB limit): p50 {s50:.2f} s,"
          f" max {max(suspensions):.2f} s")  # fmt: skip
    ratio = s50 / SAMPLE_INTERVAL
    print(f"ratio suspension / sample interval ({SAMPLE_INTERVAL:.0f} s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
