"""decide(usage, limits, now): pure suspension / resumption decisions."""

from __future__ import annotations

from edgeward.central.decide import Decision, UserLimits, decide
from edgeward.proto import v1

NONE = v1.Reason.UNSPECIFIED
NOW = 1_000_000


def limits(limit=None, expires=None, reason=NONE) -> UserLimits:
    return UserLimits(limit, expires, reason)


def test_quota_exhausted_suspends_and_below_quota_does_not():
    got = decide({"a": 1000, "b": 999}, {"a": limits(1000), "b": limits(1000)}, NOW)
    assert got == [Decision("a", v1.Action.SUSPEND, v1.Reason.QUOTA)]


def test_expiry_passed_suspends_at_the_expiry_instant():
    users = {"a": limits(expires=NOW), "b": limits(expires=NOW + 1)}
    assert decide({}, users, NOW) == [Decision("a", v1.Action.SUSPEND, v1.Reason.EXPIRED)]


def test_expiry_wins_over_quota_and_a_changed_reason_resuspends():
    both = limits(10, NOW - 1)
    assert decide({"a": 50}, {"a": both}, NOW) == [
        Decision("a", v1.Action.SUSPEND, v1.Reason.EXPIRED)
    ]
    was_quota = limits(10, NOW - 1, v1.Reason.QUOTA)
    assert decide({"a": 50}, {"a": was_quota}, NOW) == [
        Decision("a", v1.Action.SUSPEND, v1.Reason.EXPIRED)
    ]


def test_renewal_resumes_an_expired_user():
    renewed = limits(expires=NOW + 86_400_000, reason=v1.Reason.EXPIRED)
    assert decide({}, {"a": renewed}, NOW) == [Decision("a", v1.Action.RESUME, v1.Reason.EXPIRED)]


def test_top_up_resumes_a_quota_suspended_user():
    topped = limits(2000, reason=v1.Reason.QUOTA)
    assert decide({"a": 1500}, {"a": topped}, NOW) == [
        Decision("a", v1.Action.RESUME, v1.Reason.QUOTA)
    ]


def test_users_already_in_the_right_state_produce_nothing():
    users = {
        "suspended": limits(10, reason=v1.Reason.QUOTA),
        "fine": limits(10),
        "unlimited": limits(),
    }
    assert decide({"suspended": 10, "fine": 9, "unlimited": 10**15}, users, NOW) == []


def test_missing_usage_counts_as_zero_and_output_is_sorted():
    users = {"z": limits(0), "a": limits(0), "m": limits(1)}
    got = decide({}, users, NOW)
    assert [d.user_id for d in got] == ["a", "z"]
