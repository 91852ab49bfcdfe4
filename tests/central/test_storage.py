"""Users, plans, assignments, decisions, leases and desired state on both backends (a real
SQLite file, a real PostgreSQL cluster); SQLite's own file checks at the top."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeward.central import schema
from edgeward.central.errors import CentralError, Conflict, InvalidInput, NotFound
from edgeward.central.notify import NodeEvent
from edgeward.central.records import now_ms
from edgeward.central.storage import SqliteStorage, Storage
from edgeward.proto import v1
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta

DAY = 86_400_000
NODES = ["node-a", "node-b", "node-c"]


async def open_fleet(where: Path | StorageBackend) -> Storage:
    """where: a SQLite file (the SQLite-only tests) or a backend of storage_backend."""
    storage = await (
        where.open() if isinstance(where, StorageBackend) else SqliteStorage.open(where)
    )
    for node in NODES:
        await storage.add_node(node, PROXY_INBOUNDS, actor="admin:root")
    await storage.create_plan("basic", actor="admin:root", data_limit_bytes=3000, duration_days=30)
    return storage


async def create_fleet(path: Path) -> None:  # SQLite only
    storage = await open_fleet(path)
    await storage.close()


def test_migrations_are_versioned_and_idempotent(tmp_path: Path):
    database = tmp_path / "c.sqlite"
    asyncio.run(create_fleet(database))
    conn = sqlite3.connect(database)
    assert schema.schema_version(conn) == schema.LATEST_VERSION
    assert schema.migrate(conn) == schema.LATEST_VERSION  # nothing left to do
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    with pytest.raises(schema.SchemaTooNew, match="schema version 99 is newer"):
        schema.migrate(conn)
    conn.close()


def test_created_user_gets_credentials_from_the_plan_and_an_audit_entry(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await open_fleet(storage_backend)
        at = now_ms()
        user = await storage.create_user(
            "alice", actor="admin:root", plan_id="basic", node_ids=["node-a", "node-b"], at_ms=at
        )
        given = await storage.create_user(
            "bob", actor="admin:root", uuid="6BA7B810-9DAD-11D1-80B4-00C04FD430C8"
        )
        audit = await storage.audit_log()
        await storage.close()
        return at, user, given, audit

    at, user, given, audit = asyncio.run(main())
    assert user.data_limit_bytes == 3000 and user.expires_at_ms == at + 30 * DAY
    assert user.node_ids == ("node-a", "node-b")
    assert uuid.UUID(user.uuid).version == 4
    assert given.uuid == "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    # The WireGuard public key is the X25519 public key of the stored private key.
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(user.wg_private_key))
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(public).decode() == user.wg_public_key
    assert (user.wg_address, given.wg_address) == ("10.66.0.1/32", "10.66.0.2/32")
    assert [(e.actor, e.action, e.subject) for e in audit][-2:] == [
        ("admin:root", "create-user", "alice"),
        ("admin:root", "create-user", "bob"),
    ]


BAD_REQUESTS = [
    (lambda s: s.create_user("Alice", actor="t"), InvalidInput, "invalid user id 'Alice'"),
    (lambda s: s.create_user("x", actor="t", uuid="not-a-uuid"), InvalidInput, "invalid UUID"),
    (lambda s: s.create_user("x", actor="t", plan_id="gold"), NotFound, "unknown plan 'gold'"),
    (lambda s: s.create_user("x", actor="t", node_ids=["node-z"]), NotFound, "unknown node"),
    (lambda s: s.create_user("x", actor="t", data_limit_bytes=-1), InvalidInput, ">= 0, got -1"),
    (lambda s: s.create_user("x", actor="t", expires_at_ms=1), InvalidInput, "in the past"),
    (lambda s: s.create_user("alice", actor="t"), Conflict, "user 'alice' already exists"),
    (lambda s: s.create_user("x", actor="t", uuid=FIXED_UUID), Conflict, "already used"),
    (lambda s: s.create_plan("basic", actor="t"), Conflict, "plan 'basic' already exists"),
    (lambda s: s.create_plan("p", actor="t", duration_days=0), InvalidInput, "days > 0"),
    (lambda s: s.add_node("node-a", [], actor="t"), Conflict, "node 'node-a' already exists"),
    (lambda s: s.add_node("Bad_Node", [], actor="t"), InvalidInput, "invalid node id"),
    (lambda s: s.assign("alice", "node-z", actor="t"), NotFound, "unknown node 'node-z'"),
    (lambda s: s.assign("nobody", "node-a", actor="t"), NotFound, "unknown user 'nobody'"),
    (lambda s: s.unassign("alice", "node-c", actor="t"), NotFound, "is not assigned"),
    (lambda s: s.renew("alice", actor="t", expires_at_ms=5), InvalidInput, "in the past"),
    (lambda s: s.renew("bob", actor="t"), InvalidInput, "has no plan with a duration"),
    (lambda s: s.top_up("alice", -5, actor="t"), InvalidInput, ">= 0, got -5"),
    (lambda s: s.top_up("bob", 5, actor="t"), InvalidInput, "has no data limit"),
    (lambda s: s.set_suspended("alice", True, actor="t", why=""), InvalidInput, "needs a reason"),
]
FIXED_UUID = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(("request_", "error", "text"), BAD_REQUESTS)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    storage_backend: StorageBackend, request_, error, text
):
    async def main():
        storage = await open_fleet(storage_backend)
        await storage.create_user("alice", actor="t", plan_id="basic", node_ids=["node-a"])
        await storage.create_user("bob", actor="t", uuid=FIXED_UUID)
        events: list[NodeEvent] = []
        subscriptions = contextlib.ExitStack()  # held until the end of main()
        for node in NODES:
            subscriptions.enter_context(storage.notifier.subscribe(node, events.append))
        before = await storage_backend.dump()
        with pytest.raises(error) as caught:
            await request_(storage)
        after = await storage_backend.dump()
        await storage.close()
        return before, after, str(caught.value), events

    before, after, message, events = asyncio.run(main())
    assert text in message
    assert isinstance(error("x"), CentralError)
    assert after == before
    assert events == []


def test_audit_log_is_append_only(tmp_path: Path):
    database = tmp_path / "c.sqlite"
    asyncio.run(create_fleet(database))
    conn = sqlite3.connect(database)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET actor = 'someone-else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log")
    conn.close()


def test_quota_exhaustion_suspends_on_every_serving_node_and_top_up_resumes(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await open_fleet(storage_backend)
        await storage.create_user("alice", actor="t", data_limit_bytes=1000, node_ids=NODES)
        events: list[NodeEvent] = []
        subscriptions = contextlib.ExitStack()  # held until the end of main()
        for node in NODES:
            subscriptions.enter_context(storage.notifier.subscribe(node, events.append))
        await storage.ingest("node-a", [delta(1, "alice", 400, 0)])
        assert events == []  # below quota: no change of desired state
        await storage.ingest("node-b", [delta(1, "alice", 300, 300)])
        suspended = await storage.get_user("alice")
        suspend_events = list(events)
        events.clear()
        await storage.top_up("alice", 500, actor="admin:root", why="paid")
        resumed = await storage.get_user("alice")
        audit = [(e.actor, e.action, e.reason) for e in await storage.audit_log()][-3:]
        await storage.close()
        return suspended, suspend_events, resumed, events, audit

    suspended, suspend_events, resumed, resume_events, audit = asyncio.run(main())
    assert suspended.enforced_reason == v1.Reason.QUOTA and suspended.suspended
    command = v1.Command("alice", v1.Action.SUSPEND, v1.Reason.QUOTA)
    assert sorted(e.node_id for e in suspend_events) == NODES
    assert all(e.commands == (command,) for e in suspend_events)
    assert not resumed.suspended and resumed.data_limit_bytes == 1500
    assert sorted(e.node_id for e in resume_events) == NODES
    resume = v1.Command("alice", v1.Action.RESUME, v1.Reason.QUOTA)
    assert all(e.commands == (resume,) for e in resume_events)
    assert audit == [
        ("central", "suspend", "quota exhausted: used 1000 of 1000 bytes"),
        ("admin:root", "top-up", "paid"),
        ("admin:root", "resume", "quota no longer applies (used 1000 bytes)"),
    ]


def test_expiry_suspends_and_renewal_resumes(storage_backend: StorageBackend):
    async def main():
        storage = await open_fleet(storage_backend)
        start = now_ms()
        await storage.create_user(
            "alice", actor="t", plan_id="basic", node_ids=["node-a"], at_ms=start
        )
        quiet = await storage.enforce(at_ms=start + DAY)
        expired = await storage.enforce(at_ms=start + 31 * DAY)
        again = await storage.enforce(at_ms=start + 31 * DAY)
        snapshot = await storage.snapshot("node-a")
        renewed = await storage.renew("alice", actor="admin:root", reset_usage=True)
        after = await storage.snapshot("node-a")
        await storage.close()
        return quiet, expired, again, snapshot, renewed, after

    quiet, expired, again, snapshot, renewed, after = asyncio.run(main())
    assert quiet == [] and again == []
    assert [(d.user_id, d.action, d.reason) for d in expired] == [
        ("alice", v1.Action.SUSPEND, v1.Reason.EXPIRED)
    ]
    assert snapshot.users[0].suspended and snapshot.users[0].suspended_reason == v1.Reason.EXPIRED
    assert not renewed.suspended and renewed.expires_at_ms > now_ms() + 29 * DAY
    assert not after.users[0].suspended and after.revision > snapshot.revision


def test_desired_state_revisions_and_changes(storage_backend: StorageBackend):
    async def main():
        storage = await open_fleet(storage_backend)
        r0 = (await storage.snapshot("node-a")).revision
        await storage.create_user("alice", actor="t", node_ids=["node-a"])
        await storage.create_user("bob", actor="t", node_ids=["node-a", "node-b"])
        r2 = (await storage.snapshot("node-a")).revision
        change_all = await storage.desired_change("node-a", r0)
        await storage.unassign("alice", "node-a", actor="t")
        change_rm = await storage.desired_change("node-a", r2)
        current = await storage.desired_change("node-a", change_rm.revision)
        bogus = await storage.desired_change("node-a", 10**6)
        snap_b = await storage.snapshot("node-b")
        await storage.close()
        return r0, r2, change_all, change_rm, current, bogus, snap_b

    r0, r2, change_all, change_rm, current, bogus, snap_b = asyncio.run(main())
    assert r2 == r0 + 2
    assert (change_all.base_revision, change_all.revision) == (r0, r2)
    assert [u.user_id for u in change_all.upserts] == ["alice", "bob"]
    spec = change_all.upserts[0]
    assert [(p.inbound_tag, p.protocol, p.email) for p in spec.proxies] == [
        ("trojan-in", v1.Protocol.TROJAN, "alice"),
        ("vless-in", v1.Protocol.VLESS, "alice"),
    ]
    assert spec.wireguard[0].interface == "wg0" and spec.wireguard[0].allowed_ips == [
        "10.66.0.1/32"
    ]
    assert change_rm.upserts == [] and change_rm.removed_user_ids == ["alice"]
    assert change_rm.revision == r2 + 1
    assert current is None
    assert isinstance(bogus, v1.DesiredSnapshot) and [u.user_id for u in bogus.users] == ["bob"]
    assert [u.user_id for u in snap_b.users] == ["bob"]  # a node sees only its own users


def test_leases_for_a_user_on_three_nodes_never_exceed_what_remains(
    storage_backend: StorageBackend,
):
    async def main():
        storage = await open_fleet(storage_backend)
        await storage.create_user("alice", actor="t", data_limit_bytes=3000, node_ids=NODES)
        grants = {}
        for node in NODES:  # each node connects
            grants.update({node: [lease.bytes for lease in await storage.grant_leases(node)]})
        held = [await storage.leases_held("alice")]
        seqs = dict.fromkeys(NODES, 0)
        for node, spent in [("node-a", 1000), ("node-a", 0), ("node-b", 400), ("node-c", 999)]:
            seqs[node] += 1
            result = await storage.ingest(node, [delta(seqs[node], "alice", spent, 0)])
            user = await storage.get_user("alice")
            state = await storage.leases_held("alice")
            held.append(state)
            assert sum(state.values()) <= user.data_limit_bytes - user.quota_used_bytes
            assert all(lease.bytes > 0 for lease in result.leases) or result.leases == []
        renewed = await storage.renew(
            "alice", actor="t", expires_at_ms=now_ms() + DAY, reset_usage=True
        )
        after_renewal = {node: await storage.grant_leases(node) for node in NODES}
        final = await storage.leases_held("alice")
        await storage.close()
        return grants, held, renewed, after_renewal, final

    grants, held, renewed, after_renewal, final = asyncio.run(main())
    assert grants == {"node-a": [1000], "node-b": [1000], "node-c": [1000]}
    # a spent its whole lease; b and c still hold theirs: nothing unleased to give a.
    assert held[1] == {"node-a": 0, "node-b": 1000, "node-c": 1000}
    assert held[-1] == {"node-a": 0, "node-b": 600, "node-c": 1}
    assert renewed.quota_used_bytes == 0
    assert final == {"node-a": 1000, "node-b": 1000, "node-c": 1000}
    assert sum(final.values()) <= 3000
    # lease ids count the user's grants: 3 at connect, none while spending, 3 after renewal.
    assert [[lease.lease_id for lease in after_renewal[n]] for n in NODES] == [[4], [5], [6]]
