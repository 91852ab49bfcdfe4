"""`edgeward users|plans ...` through CliRunner against a real central over real mTLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin.fleet import Fleet, running_fleet
from tests.central.backends import StorageBackend

GIB = 1024**3
DAY_MS = 86_400_000
NODE_ARGS = ("--address", "vpn1.example.com",
             "--inbound", "tag=vless-in,protocol=vless,port=443,security=tls,sni=vpn1.example.com",
             "--inbound", "tag=trojan-in,protocol=trojan,port=8443")  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path, storage_backend: StorageBackend) -> Iterator[Fleet]:
    with running_fleet(tmp_path, storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", *NODE_ARGS)
        fleet.ok("plans", "add", "basic", "--data-limit", "10GiB", "--duration", "30")
        yield fleet


def test_user_lifecycle_with_json_read_back(fleet: Fleet):
    before = time.time() * 1000
    added = fleet.json("users", "add", "alice", "--plan", "basic", "--node", "n1")
    assert added["user_id"] == "alice"
    assert added["data_limit_bytes"] == 10 * GIB
    assert added["node_ids"] == ["n1"]
    assert before + 30 * DAY_MS <= added["expires_at_ms"] <= time.time() * 1000 + 30 * DAY_MS
    assert [u["user_id"] for u in fleet.json("users", "list")] == ["alice"]
    assert fleet.json("users", "list", "--node", "n1")[0]["uuid"] == added["uuid"]
    assert fleet.json("users", "list", "--plan", "other") == []
    assert fleet.json("users", "show", "alice") == added

    renewed = fleet.json("users", "renew", "alice", "--expires", "2099-01-01", "--reset-usage")
    assert renewed["expires_at_ms"] == 4070908800000
    topped = fleet.json("users", "topup", "alice", "1G")
    assert topped["data_limit_bytes"] == 10 * GIB + 1_000_000_000

    suspended = fleet.json("users", "suspend", "alice", "--why", "abuse report 17")
    assert suspended["admin_suspended"] is True
    assert "suspended (admin)" in fleet.ok("users", "show", "alice").stdout
    assert fleet.json("users", "resume", "alice")["admin_suspended"] is False

    reissued = fleet.json("users", "reissue", "alice")
    assert reissued["uuid"] != added["uuid"]

    refused = fleet.cli("users", "delete", "alice", input="n\n")
    assert refused.exit_code == 1 and "aborted: nothing changed" in refused.output
    assert fleet.json("users", "show", "alice")["user_id"] == "alice"
    deleted = fleet.json("users", "delete", "alice", "--yes")
    assert deleted["user_id"] == "alice"
    gone = fleet.cli("users", "show", "alice")
    assert gone.exit_code == 3 and "unknown user 'alice'" in gone.output
    assert fleet.json("users", "list") == []


def test_table_output_of_reads(fleet: Fleet):
    fleet.ok("users", "add", "bob", "--data-limit", "5G", "--node", "n1")
    listing = fleet.ok("users", "list").stdout.splitlines()
    assert listing[0].split()[:3] == ["USER", "STATE", "PLAN"]
    assert listing[1].split()[:2] == ["bob", "active"] and "4.66 GiB" in listing[1]
    assert "limit:     4.66 GiB" in fleet.ok("users", "show", "bob").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("users", "add", "carol", "--uuid", "not-a-uuid"), 2, "invalid UUID: 'not-a-uuid'"),
        (("users", "add", "carol", "--plan", "gold"), 3, "unknown plan 'gold'"),
        (("users", "add", "carol", "--node", "n9"), 3, "unknown node 'n9'"),
        (("users", "add", "carol", "--data-limit", "-5G"), 2, "cannot be negative"),
        (("users", "add", "carol", "--expires", "2001-01-01"), 2, "is in the past"),
        (("users", "add", "Carol!"), 2, "invalid user id 'Carol!'"),
        (("users", "add", "dave"), 4, "user 'dave' already exists"),
        (("users", "add", "carol", "--uuid", "11111111-2222-4333-8444-555555555555"), 4,
         "UUID 11111111-2222-4333-8444-555555555555 is already used"),
        (("users", "topup", "dave", "--", "-1G"), 2, "cannot be negative"),
        (("users", "topup", "dave", "1G"), 2, "has no data limit to top up"),
        (("users", "renew", "dave"), 2, "has no plan with a duration"),
        (("users", "renew", "dave", "--expires", "2001-01-01"), 2, "is in the past"),
        (("users", "suspend", "nobody", "--why", "x"), 3, "unknown user 'nobody'"),
        (("users", "reissue", "nobody"), 3, "unknown user 'nobody'"),
        (("users", "delete", "nobody", "--yes"), 3, "unknown user 'nobody'"),
        (("plans", "add", "basic"), 4, "plan 'basic' already exists"),
        (("plans", "add", "p2", "--duration", "0"), 2, "plan duration must be"),
        (("plans", "add", "p2", "--data-limit", "lots"), 2, "is not a size"),
        (("plans", "delete", "basic", "--yes"), 4, "used by 1 user(s)"),
        (("plans", "delete", "gold", "--yes"), 3, "unknown plan 'gold'"),
        (("nodes", "add", "n1", *NODE_ARGS), 4, "node 'n1' already exists"),
        (("nodes", "add", "n2", "--inbound", "tag=x,protocol=vless,port=99999"), 2,
         "port 99999 is outside"),
        (("nodes", "add", "n2", "--address", "bad host!", "--inbound", "tag=x,protocol=vless"),
         2, "neither an IP address nor a host name"),
        (("nodes", "add", "n2", "--inbound", "tag=w,protocol=wireguard,port=51820"), 2,
         "needs its public_key"),
        (("nodes", "add", "n2", "--inbound", "tag=x,protocol=smtp"), 2, "protocol must be"),
        (("nodes", "assign", "dave", "n9"), 3, "unknown node 'n9'"),
        (("nodes", "unassign", "dave", "n1"), 3, "is not assigned to node 'n1'"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_written(
    fleet: Fleet, args, code, message
):
    fleet.ok("users", "add", "dave", "--uuid", "11111111-2222-4333-8444-555555555555")
    fleet.ok("users", "add", "erin", "--plan", "basic")
    before = fleet.dump()
    result = fleet.cli(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert fleet.dump() == before


def test_plans_add_list_show_delete(fleet: Fleet):
    plan = fleet.json("plans", "add", "wg-only", "--data-limit", "100G", "--engine", "wireguard")
    assert plan == {"plan_id": "wg-only", "data_limit_bytes": 100_000_000_000,
                    "duration_days": None, "engines": ["wireguard"], "users": 0}  # fmt: skip
    assert [p["plan_id"] for p in fleet.json("plans", "list")] == ["basic", "wg-only"]
    assert fleet.json("plans", "show", "basic")["duration_days"] == 30
    table = fleet.ok("plans", "list").stdout
    assert "wg-only" in table and "wireguard" in table
    assert fleet.json("plans", "delete", "wg-only", "--yes")["plan_id"] == "wg-only"
    assert fleet.cli("plans", "show", "wg-only").exit_code == 3


def test_assign_and_unassign(fleet: Fleet):
    fleet.ok("nodes", "add", "n2", "--inbound", "tag=vless-in,protocol=vless")
    fleet.ok("users", "add", "frank", "--node", "n1")
    assert "frank is on: n1, n2" in fleet.ok("nodes", "assign", "frank", "n2").stdout
    assert fleet.json("users", "list", "--node", "n2")[0]["user_id"] == "frank"
    assert "frank is on: n2" in fleet.ok("nodes", "unassign", "frank", "n1").stdout
    assert fleet.json("users", "list", "--node", "n1") == []
