"""Roles on the admin API: viewer reads only, operator cannot touch nodes/PKI, wrong or
revoked certificates are refused. Every refusal leaves the database unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli import main
from edgeward.pki import authority
from tests.admin.fleet import Fleet, running_fleet
from tests.central.backends import StorageBackend

CHANGES = [
    ("users", "add", "zed"),
    ("users", "renew", "alice", "--expires", "+30d"),
    ("users", "topup", "alice", "1G"),
    ("users", "suspend", "alice", "--why", "x"),
    ("users", "resume", "alice"),
    ("users", "reissue", "alice"),
    ("users", "delete", "alice", "--yes"),
    ("users", "links", "alice"),
    ("users", "subscription", "alice"),
    ("users", "subscription", "alice", "--rotate"),
    ("plans", "add", "gold"),
    ("plans", "delete", "basic", "--yes"),
    ("nodes", "add", "n2", "--inbound", "tag=v,protocol=vless"),
    ("nodes", "assign", "alice", "n1"),
    ("nodes", "unassign", "alice", "n1"),
    ("nodes", "revoke", "n1", "--yes"),
]
READS = [
    ("users", "list", "--json"),
    ("users", "show", "alice", "--json"),
    ("plans", "list", "--json"),
    ("plans", "show", "basic", "--json"),
    ("nodes", "list", "--json"),
    ("nodes", "show", "n1", "--json"),
    ("usage", "--json"),
    ("explain", "alice", "--json"),
    ("status", "--json"),
]


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, module_storage_backend: StorageBackend
) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("roles"), module_storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", "192.0.2.1",
                 "--inbound", "tag=vless-in,protocol=vless,port=443")  # fmt: skip
        fleet.ok("plans", "add", "basic", "--data-limit", "1G")
        fleet.ok("users", "add", "alice", "--plan", "basic", "--node", "n1")
        pki = fleet.pki.node("n1")  # so that the node has a certificate to revoke
        assert pki.cert.exists()
        yield fleet


@pytest.mark.parametrize("args", CHANGES, ids=lambda a: " ".join(a[:2]))
def test_a_viewer_cannot_change_anything(fleet: Fleet, args):
    before = fleet.dump()
    result = fleet.cli(*args, role="viewer")
    assert result.exit_code == 5, result.output
    assert "role; 'viewer-one' is viewer" in result.output
    assert fleet.dump() == before


@pytest.mark.parametrize("args", READS, ids=lambda a: " ".join(a[:2]))
def test_a_viewer_reads_everything_but_credentials(fleet: Fleet, args):
    before = fleet.dump()
    result = fleet.ok(*args, role="viewer")
    assert fleet.dump() == before
    if args[:2] == ("users", "show"):
        assert '"uuid": ""' in result.stdout
    if args[0] == "status":
        assert '"caller_role": "viewer"' in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("nodes", "add", "n3", "--inbound", "tag=v,protocol=vless"),
        ("nodes", "revoke", "n1", "--yes"),
    ],
)
def test_an_operator_cannot_register_or_revoke_nodes(fleet: Fleet, args):
    before = fleet.dump()
    result = fleet.cli(*args, role="operator")
    assert result.exit_code == 5
    assert "needs the admin role; 'operator-one' is operator" in result.output
    assert fleet.dump() == before
    assert fleet.json("nodes", "show", "n1")["revoked"] is False


def test_an_operator_manages_users_and_plans(fleet: Fleet):
    assert fleet.json("plans", "add", "op-plan", role="operator")["plan_id"] == "op-plan"
    user = fleet.json("users", "add", "op-user", "--plan", "op-plan", role="operator")
    assert user["uuid"]  # operators see credentials
    fleet.ok("nodes", "assign", "op-user", "n1", role="operator")
    assert "vless://" in fleet.ok("users", "links", "op-user", role="operator").stdout
    fleet.ok("users", "delete", "op-user", "--yes", role="operator")
    fleet.ok("plans", "delete", "op-plan", "--yes", role="operator")


def _cli_with(fleet: Fleet, cert: Path, key: Path, *args: str):
    options = ["--central", f"127.0.0.1:{fleet.port}", "--cert", str(cert), "--key", str(key),
               "--ca", str(fleet.pki.ca_file)]  # fmt: skip
    return CliRunner().invoke(main, [*options, *args])


def test_a_node_certificate_is_refused_on_the_admin_api(fleet: Fleet):
    node = fleet.pki.node("n1")
    result = _cli_with(fleet, node.cert, node.key, "users", "list")
    assert result.exit_code == 5
    assert "a node certificate ('n1') cannot be used here; admin certificate required" in (
        result.output
    )


def test_a_revoked_admin_certificate_is_refused(fleet: Fleet, tmp_path: Path):
    from tests.central.helpers import write_pair

    issued = authority.issue_admin(fleet.pki.store, "leaver", "admin", datetime.now(UTC))
    pair = write_pair(tmp_path, "leaver", issued)
    assert _cli_with(fleet, pair.cert, pair.key, "status").exit_code == 0
    authority.revoke(fleet.pki.store, f"serial:{issued.serial:x}", datetime.now(UTC), "left")
    before = fleet.dump()
    result = _cli_with(fleet, pair.cert, pair.key, "users", "add", "x")
    assert result.exit_code == 5 and "is revoked" in result.output
    assert fleet.dump() == before


def test_a_connection_without_a_certificate_is_refused(fleet: Fleet):
    import asyncio

    from grpclib.client import Channel
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from edgeward.admin_client import close_channel
    from edgeward.pki.tls import client_context
    from edgeward.proto import v1

    async def anonymous() -> GRPCError:
        channel = Channel("127.0.0.1", fleet.port, ssl=client_context(fleet.pki.ca_file))
        try:
            await v1.AdminServiceStub(channel, timeout=10).list_users(v1.ListUsersRequest())
        except GRPCError as e:
            return e
        finally:
            await close_channel(channel)
        raise AssertionError("an anonymous client was served")

    error = asyncio.run(anonymous())
    assert error.status == Status.UNAUTHENTICATED
    assert error.message == "peer presented no client certificate"
