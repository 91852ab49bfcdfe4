"""Local enforcement: table tests of the pure decision, and the runner on a real journal."""

from __future__ import annotations

import pytest

from edgeward.agent.journal import EnforcementState, Lease, LocalDecision, open_journal
from edgeward.agent.local_enforcement import (
    EXPIRED,
    LEASE_SPENT,
    RESUME,
    SUSPEND,
    LocalEnforcer,
    decide,
    effective_desired,
)
from edgeward.agent.model import DesiredState, DesiredUser
from edgeward.agent.reconcile import applied_claims

NOW = 1_700_000_000_000
ADMIN = 3


def user(uid: str = "u", **kw) -> DesiredUser:
    return DesiredUser(uid, **kw)


def lease(granted: int, used: int, uid: str = "u") -> Lease:
    return Lease(uid, 1, granted, used)


def held(reason: int, uid: str = "u") -> EnforcementState:
    return EnforcementState(uid, True, reason, NOW - 5)


def released(reason: int, uid: str = "u") -> EnforcementState:
    return EnforcementState(uid, False, reason, NOW - 5)


CASES = [
    # (user, lease, current state) -> expected (action, reason) or None
    ("no lease, never expires", user(), None, None, None),
    ("no lease is no quota: unlimited", user(), None, released(LEASE_SPENT), None),
    ("lease left", user(), lease(100, 99), None, None),
    ("lease spent exactly", user(), lease(100, 100), None, (SUSPEND, LEASE_SPENT)),
    ("lease overspent", user(), lease(100, 500), None, (SUSPEND, LEASE_SPENT)),
    ("zero-byte lease", user(), lease(0, 0), None, (SUSPEND, LEASE_SPENT)),
    ("already suspended", user(), lease(100, 100), held(LEASE_SPENT), None),
    ("new grant resumes", user(), lease(100, 0), held(LEASE_SPENT), (RESUME, LEASE_SPENT)),
    ("lease dropped resumes", user(), None, held(LEASE_SPENT), (RESUME, LEASE_SPENT)),
    ("expired", user(expires_at_ms=NOW), None, None, (SUSPEND, EXPIRED)),
    ("not yet expired", user(expires_at_ms=NOW + 1), None, None, None),
    ("expiry wins over lease", user(expires_at_ms=NOW - 1), lease(1, 1), None, (SUSPEND, EXPIRED)),
    ("spent then expired", user(expires_at_ms=NOW), lease(1, 1), held(LEASE_SPENT),
     (SUSPEND, EXPIRED)),
    ("renewed expiry resumes", user(expires_at_ms=NOW + 60_000), None, held(EXPIRED),
     (RESUME, EXPIRED)),
    ("renewed but lease spent", user(expires_at_ms=NOW + 1), lease(5, 5), held(EXPIRED),
     (SUSPEND, LEASE_SPENT)),
    ("central command stays", user(), None, held(ADMIN), None),
    ("central command, expired too", user(expires_at_ms=1), None, held(ADMIN), None),
    ("central suspended: no local say", user(suspended=True, expires_at_ms=1), lease(1, 1),
     None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    "u, lse, state, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(u, lse, state, expected):
    desired = DesiredState(1, (u,))
    plan = decide(desired, {"u": lse} if lse else {}, {"u": state} if state else {}, NOW)
    if expected is None:
        assert plan.empty and plan.decisions == ()
        return
    action, reason = expected
    assert plan.decisions == (LocalDecision("u", action, reason, NOW),)
    assert plan.states == (EnforcementState("u", action == SUSPEND, reason, NOW),)


def test_decide_only_changes_the_users_concerned_and_mutates_nothing():
    desired = DesiredState(1, (user("a"), user("b"), user("c", expires_at_ms=NOW)))
    leases = {"a": lease(10, 10, "a"), "b": lease(10, 3, "b")}
    current = {"b": released(LEASE_SPENT, "b")}
    plan = decide(desired, leases, current, NOW)
    assert {(d.user_id, d.action, d.reason) for d in plan.decisions} == {
        ("a", SUSPEND, LEASE_SPENT),
        ("c", SUSPEND, EXPIRED),
    }
    assert current == {"b": released(LEASE_SPENT, "b")}


def test_effective_desired_serves_only_what_local_rules_allow():
    a, b, c = user("a"), user("b"), user("c", suspended=True, suspended_reason=ADMIN)
    desired = DesiredState(7, (a, b, c))
    assert effective_desired(desired, {}) is desired
    assert effective_desired(desired, {"a": released(LEASE_SPENT, "a")}) is desired
    eff = effective_desired(
        desired, {"a": held(LEASE_SPENT, "a"), "c": held(EXPIRED, "c"), "zz": held(EXPIRED, "zz")}
    )
    assert eff.revision == 7
    assert eff.user("a") == DesiredUser("a", suspended=True, suspended_reason=LEASE_SPENT)
    assert eff.user("b") is b
    assert eff.user("c") is c  # central's reason stays
    assert desired.user("a") is a  # the input is unchanged
    by_command = effective_desired(desired, {"b": held(ADMIN, "b")})  # central's command
    assert by_command.user("b") == DesiredUser("b", suspended=True, suspended_reason=ADMIN)
    # suspended users are out of what reconcile applies
    assert [u.user_id for u in eff.users if u.is_active(NOW)] == ["b"]
    assert applied_claims(eff, NOW) == ([], [])


async def test_enforcer_persists_decisions_and_announces_changes(tmp_path):
    desired = DesiredState(1, (user("a"), user("b", expires_at_ms=NOW + 1000)))
    now = [NOW]
    announced: list[DesiredState] = []

    async def on_change(state: DesiredState) -> None:
        announced.append(state)

    async with open_journal(tmp_path / "j.db") as journal:
        await journal.grant_leases([("a", 1, 100)])
        enforcer = LocalEnforcer(
            journal, desired=lambda: desired, on_change=on_change, wall_ms=lambda: now[0]
        )
        assert (await enforcer.check()).empty and announced == []

        await journal.grant_leases([("a", 2, 0)])  # central: nothing left for a
        now[0] = NOW + 1000  # and b's expiry passes
        plan = await enforcer.check()
        assert {(d.user_id, d.reason) for d in plan.decisions} == {
            ("a", LEASE_SPENT),
            ("b", EXPIRED),
        }
        assert [u.user_id for u in announced[-1].users if u.suspended] == ["a", "b"]
        assert {u: s.suspended for u, s in (await journal.enforcement()).items()} == {
            "a": True,
            "b": True,
        }
        assert len(await journal.unreported_decisions()) == 2
        assert (await enforcer.check()).empty and len(announced) == 1  # nothing new

        # a restarted agent reads the journal: still suspended, no new decision
        fresh = LocalEnforcer(journal, desired=lambda: desired, wall_ms=lambda: now[0])
        assert (await fresh.check()).empty
        assert [u.user_id for u in fresh.effective().users if u.suspended] == ["a", "b"]

        await journal.grant_leases([("a", 3, 1_000_000)])
        plan = await enforcer.check()
        assert plan.decisions == (LocalDecision("a", RESUME, LEASE_SPENT, NOW + 1000),)
        assert [u.user_id for u in announced[-1].users if u.suspended] == ["b"]
        assert len(await journal.unreported_decisions()) == 3
