"""explain() verdicts (pure) and central's [subscription] configuration."""

from __future__ import annotations

import dataclasses

import pytest

from edgeward.central.admin_records import UserNodeFacts
from edgeward.central.config import parse_config
from edgeward.central.errors import InvalidInput
from edgeward.central.explain import explain
from edgeward.central.node_links import NodeLinkState
from edgeward.central.records import User
from edgeward.proto import v1

NOW = 1_800_000_000_000
DAY = 86_400_000
USER = User("alice", None, 1000, NOW + 30 * DAY, False, v1.Reason.UNSPECIFIED, 0, 0, 100,
            "uuid", "pw", "priv", "pub", "10.66.0.1/32", ("n1", "n2"))  # fmt: skip
FACTS = [UserNodeFacts("n1", 5, 4, 900, 10, 90), UserNodeFacts("n2", 3, 3, None, 0, 0)]
LIVE = NodeLinkState(connected=True, last_seen_ms=NOW, applied_revision=5)


def test_served_on_every_node():
    report = explain(USER, FACTS, {"n1": LIVE, "n2": LIVE}, {}, NOW)
    assert report.served and report.reasons == []
    assert [n.state for n in report.nodes] == ["served", "served"]
    assert report.nodes[0].lease_bytes == 900 and report.nodes[1].lease_bytes is None


def test_one_offline_node_is_a_caveat_not_a_refusal():
    offline = NodeLinkState(connected=False, last_seen_ms=NOW - DAY, applied_revision=3)
    report = explain(USER, FACTS, {"n1": LIVE, "n2": offline}, {}, NOW)
    assert report.served
    assert report.summary == "alice is served on 1 of 2 node(s)"
    assert report.reasons == [
        "n2: node offline (last seen 2027-01-14 08:00:00Z); it holds the user's latest state"
    ]


def test_pending_failed_and_revoked_nodes():
    behind = dataclasses.replace(LIVE, applied_revision=3)
    failing = dataclasses.replace(LIVE, apply_errors={"alice": "invalid UUID"})
    report = explain(USER, FACTS, {"n1": behind, "n2": failing}, {}, NOW)
    assert not report.served
    assert [n.state for n in report.nodes] == ["pending", "failed"]
    assert report.reasons == ["no node serves the user right now: n1: pending; n2: failed"]
    revoked = explain(USER, FACTS, {"n1": LIVE, "n2": LIVE}, {"n1": True, "n2": True}, NOW)
    assert [n.state for n in revoked.nodes] == ["revoked", "revoked"]


@pytest.mark.parametrize(
    ("changes", "first_reason"),
    [
        ({"admin_suspended": True}, "suspended by an admin"),
        ({"enforced_reason": v1.Reason.QUOTA, "quota_used_bytes": 1000},
         "data limit reached: used 1000 B of 1000 B"),
        ({"enforced_reason": v1.Reason.EXPIRED, "expires_at_ms": NOW - DAY},
         "expired at 2027-01-14 08:00:00Z"),
        ({"node_ids": ()}, "not assigned to any node"),
    ],
)  # fmt: skip
def test_the_user_state_reason_comes_first(changes, first_reason):
    user = dataclasses.replace(USER, **changes)
    facts = FACTS if user.node_ids else []
    report = explain(user, facts, {"n1": LIVE, "n2": LIVE}, {}, NOW)
    assert not report.served
    assert report.reasons[0].startswith(first_reason)
    assert report.summary.startswith("alice is NOT served: " + first_reason)


def test_caveats_when_expiry_or_the_limit_is_near():
    user = dataclasses.replace(USER, expires_at_ms=NOW + DAY, quota_used_bytes=950)
    report = explain(user, FACTS, {"n1": LIVE, "n2": LIVE}, {}, NOW)
    assert report.served
    assert report.reasons == ["expires soon: 2027-01-16 08:00:00Z",
                              "data limit nearly used: 950 B of 1000 B"]  # fmt: skip


def test_subscription_endpoint_configuration():
    config = parse_config('[subscription]\nlisten = "127.0.0.1:7444"\n')
    assert (config.subscription_host, config.subscription_port) == ("127.0.0.1", 7444)
    assert config.subscription_url == "http://127.0.0.1:7444"
    public = parse_config(
        '[subscription]\nlisten = "[::1]:80"\npublic_url = "https://sub.example.com"\n'
    )
    assert public.subscription_host == "::1" and public.subscription_url.startswith("https://")
    assert parse_config("").subscription_host == ""  # off unless configured
    with pytest.raises(InvalidInput, match=r"\[subscription\] listen must be host:port"):
        parse_config('[subscription]\nlisten = "nowhere"\n')
    with pytest.raises(InvalidInput, match="public_url must start with http"):
        parse_config('[subscription]\nlisten = ":1"\npublic_url = "ftp://x"\n')
