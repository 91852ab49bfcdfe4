"""The admin API itself (what the CLI cannot send): central validates on its side too;
plan engines shape what nodes serve and which client configs exist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from edgeward.admin_client import AdminSettings, CommandError, call
from edgeward.proto import v1
from tests.admin.fleet import ConnectedNode, Fleet, running_fleet
from tests.central.backends import StorageBackend

from .test_cli_nodes import hello

WG_KEY = "B" * 43 + "="


@pytest.fixture
def fleet(tmp_path: Path, storage_backend: StorageBackend) -> Iterator[Fleet]:
    with running_fleet(tmp_path, storage_backend) as fleet:
        wg = f"tag=wg0,protocol=wireguard,port=51820,public_key={WG_KEY}"
        vless = "tag=vless-in,protocol=vless,port=443"
        fleet.ok("nodes", "add", "n1", "--address", "vpn1.example.com",
                 "--inbound", vless, "--inbound", wg)  # fmt: skip
        yield fleet


def api(fleet: Fleet, work, role: str = "operator"):
    pair = fleet.admins[role]
    settings = AdminSettings("127.0.0.1", fleet.port, pair.cert, pair.key, fleet.pki.ca_file)
    return call(settings, work)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (v1.AddUserRequest(user_id="x", data_limit_bytes=-1), "data limit must be a whole"),
        (v1.AddUserRequest(user_id="x", expires_at_ms=1), "is in the past"),
        (v1.AddUserRequest(user_id="x", uuid="zzz"), "invalid UUID"),
        (v1.PlanInfo(plan_id="p", data_limit_bytes=-5), "data limit must be a whole"),
        (v1.PlanInfo(plan_id="p", duration_days=-1), "plan duration must be"),
        (v1.TopUpUserRequest(user_id="u", extra_bytes=-1), "top-up must be a whole"),
        (v1.ImportUsersRequest(users=[v1.ImportedUser(user_id="y", data_limit_bytes=-3)]),
         "data limit must be >= 0"),
        (v1.UsageRequest(group_by="week"), "group by one of user, node, hour, day"),
    ],
)  # fmt: skip
def test_central_refuses_bad_values_the_cli_would_not_send(fleet: Fleet, request_, message):
    fleet.ok("users", "add", "u", "--data-limit", "1G")
    method = {
        v1.AddUserRequest: "add_user", v1.PlanInfo: "add_plan",
        v1.TopUpUserRequest: "top_up_user", v1.ImportUsersRequest: "import_users",
        v1.UsageRequest: "get_usage",
    }[type(request_)]  # fmt: skip
    before = fleet.dump()

    async def work(stub):
        try:
            await getattr(stub, method)(request_)
        except GRPCError as e:
            return e
        raise AssertionError("accepted")

    error = api(fleet, work)
    assert error.status == Status.INVALID_ARGUMENT and message in error.message
    assert fleet.dump() == before


def test_call_maps_statuses_to_exit_codes(fleet: Fleet):
    with pytest.raises(CommandError) as caught:
        api(fleet, lambda stub: stub.get_user(v1.UserRef(user_id="ghost")), role="viewer")
    assert caught.value.exit_code == 3 and "unknown user 'ghost'" in caught.value.message


def test_plan_engines_decide_what_the_node_serves_and_which_configs_exist(fleet: Fleet):
    fleet.ok("plans", "add", "wg-only", "--engine", "wireguard")
    fleet.ok("users", "add", "wendy", "--plan", "wg-only", "--node", "n1")
    fleet.ok("users", "add", "paul", "--node", "n1")
    with ConnectedNode(fleet, "n1", hello()) as node:
        snapshot = node.messages[1][1]
    specs = {spec.user_id: spec for spec in snapshot.users}
    assert specs["wendy"].proxies == [] and len(specs["wendy"].wireguard) == 1
    assert len(specs["paul"].proxies) == 1 and len(specs["paul"].wireguard) == 1
    wendy = fleet.json("users", "links", "wendy", role="operator")["links"]
    assert [link["inbound_tag"] for link in wendy] == ["wg0"]
    paul = fleet.json("users", "links", "paul", role="operator")["links"]
    assert [link["inbound_tag"] for link in paul] == ["vless-in", "wg0"]
