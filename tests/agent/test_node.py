"""The node's pure rules (verdict, effective state, local decisions) and its refusal of
malformed input from central on a real journal file (nothing stored changes)."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import pytest

from edgeward.agent.config import AgentConfig
from edgeward.agent.journal import EnforcementState, Journal, Lease, open_journal
from edgeward.agent.model import DesiredState, DesiredUser, ProxyProtocol, ProxyUser
from edgeward.agent.node import (
    Node,
    RefusedInput,
    check_commands,
    verdict,
)
from edgeward.agent.uplink import Uplink
from edgeward.proto import v1
from tests.central.helpers import dump

NOW = 1_800_000_000_000
EXPIRED, LEASE_SPENT, QUOTA = (int(v1.Reason.EXPIRED), int(v1.Reason.LEASE_SPENT), 1)
SUSPEND, RESUME = int(v1.Action.SUSPEND), int(v1.Action.RESUME)


def user(user_id: str, **kw) -> DesiredUser:
    proxy = ProxyUser("vless-in", ProxyProtocol.VLESS, user_id, str(uuid.uuid4()))
    return DesiredUser(user_id, (proxy,), **kw)


# ---------------------------------------------------------------- pure rules


def test_verdict_says_why_first_reason_wins():
    lease_spent = Lease("u", 3, 100, 100)
    assert verdict(None, None, None, NOW).reason == "not in this node's desired state"
    central = verdict(user("u", suspended=True, suspended_reason=QUOTA), None, lease_spent, NOW)
    assert not central.served and central.reason == "suspended by central (quota)"
    expired = verdict(user("u", expires_at_ms=NOW), None, lease_spent, NOW)
    assert (expired.served, expired.code) == (False, EXPIRED)
    spent = verdict(user("u", expires_at_ms=NOW + 1), None, lease_spent, NOW)
    assert spent.reason == "quota lease 3 spent (100 of 100 bytes)"
    commanded = verdict(user("u"), EnforcementState("u", True, QUOTA, NOW), None, NOW)
    assert commanded.reason == "suspended by central command (quota)"
    served = verdict(user("u"), None, Lease("u", 3, 100, 40), NOW)
    assert served.served and served.reason == "active; lease 3: 60 bytes left"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (v1.Command(user_id="", action=v1.Action.SUSPEND), "empty user id"),
        (v1.Command(user_id="a", action=9), "unknown action 9"),
        (v1.Command(user_id="a", action=v1.Action.SUSPEND, reason=77), "unknown reason 77"),
    ],
)
def test_malformed_commands_are_refused(command, message):
    with pytest.raises(RefusedInput, match=message):
        check_commands([v1.Command(user_id="ok", action=v1.Action.RESUME), command])


# ---------------------------------------------------------------- on a real journal


def spec(user_id: str, secret: str | None = None) -> v1.UserSpec:
    credential = v1.ProxyCredential(
        inbound_tag="vless-in",
        protocol=v1.Protocol.VLESS,
        email=user_id,
        secret=secret or str(uuid.uuid4()),
    )
    return v1.UserSpec(user_id=user_id, proxies=[credential])


async def loaded(tmp_path: Path) -> tuple[Node, list[DesiredState]]:
    journal = await Journal.open(tmp_path / "journal.sqlite")
    node = await Node.load(journal)
    await node.apply_snapshot(v1.DesiredSnapshot(revision=3, users=[spec("alice")]))
    await node.grant_leases(v1.LeaseGrant(leases=[v1.Lease(user_id="alice", bytes=9, lease_id=1)]))
    pushed: list[DesiredState] = []
    node.subscribe(pushed.append)
    pushed.clear()
    return node, pushed


BAD_INPUT = [
    (
        "snapshot",
        v1.DesiredSnapshot(revision=4, users=[spec("bob"), spec("eve", "not-a-uuid")]),
        "desired snapshot rev 4 refused: user 'eve': invalid UUID 'not-a-uuid'",
    ),
    (
        "snapshot",
        v1.DesiredSnapshot(revision=4, users=[spec("bob"), spec("bob")]),
        "user 'bob': appears 2 times",
    ),
    (
        "change",
        v1.DesiredChange(revision=4, base_revision=3, upserts=[spec("", None)]),
        "desired change rev 4 refused: user '': empty user id",
    ),
    (
        "change",
        v1.DesiredChange(revision=3, base_revision=3, upserts=[spec("bob")]),
        "is not after its base 3",
    ),
    (
        "enforcement",
        v1.Enforcement(commands=[v1.Command(user_id="alice", action=5)]),
        "unknown action 5",
    ),
    ("leases", v1.LeaseGrant(leases=[v1.Lease(user_id="", bytes=5, lease_id=9)]), "empty user"),
]


@pytest.mark.parametrize(("kind", "message", "error"), BAD_INPUT)
async def test_malformed_input_from_central_is_logged_and_changes_nothing(
    tmp_path, caplog, kind, message, error
):
    node, pushed = await loaded(tmp_path)
    before = dump(node.journal.path)
    state_before = (node.desired, dict(node.enforcement), dict(node.leases))
    uplink = Uplink(node, AgentConfig(node_id="node-a"), island=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, "edgeward.agent.uplink"):
        await uplink._on_message(None, v1.CentralMessage(**{kind: message}))  # type: ignore[arg-type]
    assert error in caplog.text and "nothing changed" in caplog.text
    assert dump(node.journal.path) == before
    assert (node.desired, node.enforcement, node.leases) == state_before
    assert pushed == []
    await node.journal.aclose()


async def test_change_on_another_base_is_a_gap_and_changes_nothing(tmp_path):
    node, pushed = await loaded(tmp_path)
    before = dump(node.journal.path)
    gap = v1.DesiredChange(revision=9, base_revision=8, upserts=[spec("bob")])
    assert await node.apply_change(gap) is False
    assert dump(node.journal.path) == before and pushed == [] and node.revision == 3
    # The right base applies; the state survives a reload from the journal.
    change = v1.DesiredChange(revision=4, base_revision=3, upserts=[spec("bob")],
                              removed_user_ids=["alice"])  # fmt: skip
    assert await node.apply_change(change) is True
    assert [u.user_id for u in pushed[-1].users] == ["bob"]
    assert node.leases == {}  # alice's lease went with her
    reloaded = await Node.load(node.journal)
    assert reloaded.desired == node.desired and reloaded.revision == 4
    await node.journal.aclose()


async def test_expiry_is_a_local_decision_stored_and_pushed(tmp_path):
    clock = [NOW]
    async with open_journal(tmp_path / "journal.sqlite") as journal:
        node = await Node.load(journal, clock=lambda: clock[0])
        alice = spec("alice")
        alice.expires_at_ms = NOW + 1000
        await node.apply_snapshot(v1.DesiredSnapshot(revision=1, users=[alice]))
        pushed: list[DesiredState] = []
        node.subscribe(pushed.append)
        assert await node.check_local() == []
        clock[0] = NOW + 1000
        decisions = await node.check_local()
        assert [(d.user_id, d.action, d.reason) for d in decisions] == [("alice", SUSPEND, EXPIRED)]
        assert pushed[-1].user("alice").suspended
        assert [d for _, d in await journal.unreported_decisions()] == decisions
        assert not node.explain("alice")["served"]


async def test_compaction_merges_unsent_deltas_and_keeps_every_byte(tmp_path):
    from edgeward.agent.deltas import ENGINE_PROXY, Delta, Sample

    async with open_journal(tmp_path / "journal.sqlite") as journal:
        node = await Node.load(journal)
        for i in range(1, 51):
            deltas = tuple(Delta(u, ENGINE_PROXY, "1", i, 2 * i) for u in ("a", "b"))
            await node.commit_sample(Sample(ENGINE_PROXY, "1", deltas, {}, {}), sampled_at_ms=i)
        before = await journal.outbox_totals()
        assert (await journal.outbox_stats()).rows == 100
        assert await node.compact_outbox() == 98
        assert await journal.outbox_totals() == before
        assert (await journal.outbox_stats()).rows == 2


async def test_a_central_suspension_whose_resume_was_missed_ends_with_the_next_snapshot(tmp_path):
    node, pushed = await loaded(tmp_path)
    suspend = v1.Command(user_id="alice", action=v1.Action.SUSPEND, reason=v1.Reason.QUOTA)
    await node.apply_enforcement(v1.Enforcement(commands=[suspend]))
    assert pushed[-1].user("alice").suspended
    # Central resumed alice while this node was away; on reconnect its snapshot
    # (alice not suspended) is the truth.
    await node.apply_snapshot(v1.DesiredSnapshot(revision=4, users=[spec("alice")]))
    assert not pushed[-1].user("alice").suspended
    assert node.explain("alice")["served"]
    assert not (await node.journal.enforcement())["alice"].suspended
    # A suspension the snapshot itself carries stays.
    suspended = spec("alice")
    suspended.suspended, suspended.suspended_reason = True, v1.Reason.QUOTA
    await node.apply_snapshot(v1.DesiredSnapshot(revision=5, users=[suspended]))
    assert pushed[-1].user("alice").suspended
    await node.journal.aclose()


async def test_changes_write_only_their_users_and_survive_a_restart(tmp_path):
    path = tmp_path / "journal.sqlite"
    async with open_journal(path) as journal:
        node = await Node.load(journal)
        await node.apply_snapshot(v1.DesiredSnapshot(revision=3, users=[spec("alice")]))
        alice_row = (await journal.desired()).users["alice"]
        bob = spec("bob")
        change = v1.DesiredChange(revision=4, base_revision=3, upserts=[bob])
        assert await node.apply_change(change)
        stored = await journal.desired()
        # alice's row was not rewritten; bob's is his spec as the agent encodes it
        assert stored.revision == 4 and stored.users["alice"] == alice_row
        assert set(stored.users) == {"alice", "bob"}
        gone = v1.DesiredChange(revision=5, base_revision=4, removed_user_ids=["alice"])
        assert await node.apply_change(gone)
    async with open_journal(path) as journal:
        again = await Node.load(journal)
        assert again.desired.revision == 5
        assert [u.user_id for u in again.desired.users] == ["bob"]
        assert again.desired.user("bob").proxies[0].secret == bob.proxies[0].secret


async def test_a_journal_holding_a_whole_snapshot_is_moved_into_user_rows(tmp_path):
    path = tmp_path / "journal.sqlite"
    snapshot = v1.DesiredSnapshot(revision=7, users=[spec("alice"), spec("bob")])
    async with open_journal(path) as journal:
        await journal.set_desired(7, {})
    # as an agent from before per-user rows left it
    conn = sqlite3.connect(path)
    conn.execute("UPDATE desired SET snapshot = ?", (bytes(snapshot),))
    conn.commit()
    conn.close()
    async with open_journal(path) as journal:
        node = await Node.load(journal)
        assert [u.user_id for u in node.desired.users] == ["alice", "bob"]
        assert node.desired.revision == 7
        stored = await journal.desired()
        assert set(stored.users) == {"alice", "bob"} and stored.legacy_snapshot == b""
