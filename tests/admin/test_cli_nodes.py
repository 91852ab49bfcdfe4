"""`edgeward nodes|usage|explain` against a real central with a node stream over mTLS."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, encode_usage
from tests.admin.fleet import ConnectedNode, Fleet, running_fleet
from tests.central.backends import StorageBackend
from tests.central.helpers import WAIT

INBOUNDS = ("--address", "203.0.113.7", "--inbound", "tag=vless-in,protocol=vless,port=443")
UNHEALTHY = 7


@pytest.fixture
def fleet(tmp_path: Path, storage_backend: StorageBackend) -> Iterator[Fleet]:
    with running_fleet(tmp_path, storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", *INBOUNDS)
        fleet.ok("users", "add", "alice", "--node", "n1")
        yield fleet


def hello(revision: int = 0, head: int = 0) -> v1.Hello:
    return v1.Hello(
        node_id="n1", software_version="0.9.1", journal_head_seq=head, desired_revision=revision
    )


def send_usage(fleet: Fleet, node: ConnectedNode, seqs: range, user: str, down: int) -> int:
    """Send deltas and return the acked seq central answers."""
    rows = [UsageDelta(seq, user, v1.Engine.PROXY, "e1", 10, down, 1_000) for seq in seqs]

    async def exchange() -> int:
        await node.node.send(usage=encode_usage(rows))
        for _ in range(20):
            kind, body = await node.node.recv()
            if kind == "ack":
                return body.acked_seq
        raise AssertionError("no ack")

    return fleet.run(exchange())


def health(fleet: Fleet, *args: str) -> tuple[int, dict]:
    result = fleet.cli("nodes", "health", "n1", "--json", "--check", *args, role="viewer")
    return result.exit_code, json.loads(result.stdout)


def test_health_list_and_show_follow_the_node_stream(fleet: Fleet):
    code, report = health(fleet)
    assert code == UNHEALTHY
    assert report["connected"] is False and report["last_seen_ms"] == 0
    assert report["problems"] == ["not connected (last seen never)"]

    with ConnectedNode(fleet, "n1", hello(head=12)) as node:
        code, report = health(fleet, "--expect-version", "0.9.1")
        assert code == 0, report
        assert report["healthy"] and report["software_version"] == "0.9.1"
        assert report["outbox_lag"] == 12 and report["journal_head_seq"] == 12
        assert report["last_seen_ms"] > 0

        assert send_usage(fleet, node, range(1, 6), "alice", 1000) == 5
        code, report = health(fleet, "--max-lag", "5")
        assert code == UNHEALTHY
        assert report["outbox_lag"] == 7 and report["acked_seq"] == 5
        assert report["problems"] == ["outbox lag 7 > 5"]
        code, report = health(fleet, "--expect-version", "1.0.0")
        assert report["problems"] == ["runs 0.9.1, expected 1.0.0"] and code == UNHEALTHY
        # Between acks the node's heartbeats carry its journal head: the lag grows.
        fleet.run(node.node.send(heartbeat=v1.Heartbeat(sent_at_ms=1, journal_head_seq=30)))
        fleet.run(node.node.recv())  # central's heartbeat answer: the head was recorded
        code, report = health(fleet)
        assert report["outbox_lag"] == 25 and report["journal_head_seq"] == 30

        [listed] = fleet.json("nodes", "list", role="viewer")
        assert listed["node_id"] == "n1" and listed["link"]["connected"] is True
        assert listed["users_assigned"] == 1 and listed["downlink_bytes"] == 5000
        assert listed["public_address"] == "203.0.113.7"
        assert listed["inbounds"][0]["port"] == 443
        table = fleet.ok("nodes", "list", role="viewer").stdout.splitlines()
        assert table[1].split()[:3] == ["n1", "connected", "0.9.1"]
        assert "outbox lag: 25 delta(s)" in fleet.ok("nodes", "show", "n1").stdout
    # The stream is gone: central says so and keeps when it last heard from the node.
    for _ in range(100):
        code, report = health(fleet)
        if not report["connected"]:
            break
        fleet.run(asyncio.sleep(0.02))
    assert code == UNHEALTHY and report["last_seen_ms"] > 0
    assert fleet.cli("nodes", "show", "n9").exit_code == 3


def test_usage_per_user_node_and_period(fleet: Fleet):
    fleet.ok("users", "add", "bob", "--node", "n1")
    with ConnectedNode(fleet, "n1", hello()) as node:
        send_usage(fleet, node, range(1, 4), "alice", 1000)
        send_usage(fleet, node, range(4, 5), "bob", 500)
    by_user = fleet.json("usage", role="viewer")
    assert [(r["user_id"], r["uplink_bytes"], r["downlink_bytes"]) for r in by_user["rows"]] == [
        ("alice", 30, 3000),
        ("bob", 10, 500),
    ]
    assert (by_user["uplink_bytes"], by_user["downlink_bytes"]) == (40, 3500)
    by_node = fleet.json("usage", "--by", "node")
    assert [(r["node_id"], r["downlink_bytes"]) for r in by_node["rows"]] == [("n1", 3500)]
    # Deltas were sampled at 1000 ms: all of them fall into the first hour and day.
    by_day = fleet.json("usage", "--by", "day", "--user", "alice")
    assert [(r["period_start_ms"], r["downlink_bytes"]) for r in by_day["rows"]] == [(0, 3000)]
    assert fleet.json("usage", "--since", "2020-01-01")["rows"] == []
    assert fleet.json("usage", "--node", "n1", "--until", "1970-01-02")["downlink_bytes"] == 3500
    table = fleet.ok("usage").stdout.splitlines()
    assert table[0].split() == ["USER", "UP", "DOWN", "TOTAL"]
    assert table[-1].split()[0] == "total"
    bad = fleet.cli("usage", "--since", "2026-02-01", "--until", "2026-01-01")
    assert bad.exit_code == 2 and "bad period" in bad.output


def explain(fleet: Fleet, user: str = "alice") -> dict:
    return fleet.json("explain", user, role="viewer")


def test_explain_names_the_reason_on_every_node(fleet: Fleet):
    offline = explain(fleet)
    assert offline["served"] is False
    assert offline["nodes"][0]["state"] == "node-offline"
    assert "never connected" in offline["nodes"][0]["detail"]
    assert "no node serves the user right now" in offline["reasons"][0]

    with ConnectedNode(fleet, "n1", hello(revision=0)) as node:
        pending = explain(fleet)
        assert pending["nodes"][0]["state"] == "pending", pending
        assert pending["served"] is False
        snapshot = node.messages[1][1]
        node.send(
            applied=v1.AppliedReport(revision=snapshot.revision, users_desired=1, users_applied=1)
        )
        for _ in range(100):  # the report is handled on central's loop
            served = explain(fleet)
            if served["served"]:
                break
        assert served["served"] is True, served
        assert served["summary"] == "alice is served on 1 of 1 node(s)"
        text = fleet.ok("explain", "alice").stdout
        assert "alice is served on 1 of 1 node(s)" in text and "n1" in text

        fleet.ok("users", "suspend", "alice", "--why", "chargeback")
        suspended = explain(fleet)
        assert suspended["served"] is False
        assert suspended["reasons"][0].startswith("suspended by an admin")
        assert any("suspend: chargeback" in line for line in suspended["recent_actions"])
        fleet.ok("users", "resume", "alice")

        fleet.ok("users", "add", "carol", "--node", "n1", "--data-limit", "2000")
        send_usage(fleet, node, range(1, 3), "carol", 1500)
        over = explain(fleet, "carol")
        assert over["served"] is False
        assert over["reasons"][0].startswith("data limit reached: used 2.95 KiB of 1.95 KiB")
        node.send(applied=v1.AppliedReport(
            revision=snapshot.revision + 10, errors=[v1.ApplyError("alice", v1.Engine.PROXY,
                                                                   "invalid UUID")]))  # fmt: skip
        for _ in range(100):
            failed = explain(fleet)
            if failed["nodes"][0]["state"] == "failed":
                break
        assert "could not apply the user: invalid UUID" in failed["nodes"][0]["detail"]
    assert fleet.cli("explain", "nobody").exit_code == 3


def test_revoke_needs_admin_and_ends_the_node_stream(fleet: Fleet):
    with ConnectedNode(fleet, "n1", hello()) as node:
        refused = fleet.cli("nodes", "revoke", "n1", "--yes", role="operator")
        assert refused.exit_code == 5
        assert "revoke node needs the admin role; 'operator-one' is operator" in refused.output
        assert fleet.json("nodes", "show", "n1")["revoked"] is False
        revoked = fleet.json("nodes", "revoke", "n1", "--yes", "--reason", "stolen")
        assert revoked["revoked"] is True

        async def ended() -> tuple[str, object]:
            return await asyncio.wait_for(node.node.recv(), WAIT)

        kind, body = fleet.run(ended())
        assert kind == "error" and body.code == "shutting-down"
    code, report = health(fleet)
    assert code == UNHEALTHY and "revoked" in report["problems"]
    assert fleet.ok("nodes", "list").stdout.splitlines()[1].split()[1] == "revoked"


def rollout_health_class():
    """packaging/rollout/rollout.py is a script, not a package: load it by path."""
    path = Path(__file__).parents[2] / "packaging" / "rollout" / "rollout.py"
    spec = importlib.util.spec_from_file_location("admin_tests_rollout", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.Health


def test_health_json_is_what_the_staged_rollout_reads(fleet: Fleet):
    Health = rollout_health_class()
    offline = fleet.cli("node", "health", "n1", "--json", role="viewer")
    assert offline.exit_code == 0  # a poller keeps waiting for a reconnecting node
    assert Health.parse(offline.stdout) == Health(False, "", 0)
    with ConnectedNode(fleet, "n1", hello(head=3)):
        online = fleet.ok("node", "health", "n1", "--json", role="viewer")
        assert Health.parse(online.stdout) == Health(True, "0.9.1", 3)
