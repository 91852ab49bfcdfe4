"""Several replicas doing the same kind of write at once (real PostgreSQL): enforcement
passes decide each suspension once (audited once, pushed once); user creations get
distinct WireGuard addresses, and the same user id twice is a clear Conflict; lease
grants of one user on nodes of different replicas never sum to more than remains."""

from __future__ import annotations

import asyncio

import asyncpg

from edgeward.central.errors import Conflict
from edgeward.central.notify import NodeEvent
from edgeward.central.pg_storage import PgStorage
from tests.central.helpers import PROXY_INBOUNDS, delta

NOW = 1_800_000_000_000
USERS = 50


def test_two_replicas_enforcing_at_once_decide_each_suspension_once(postgres_dsn: str):
    async def main():
        first = await PgStorage.open(postgres_dsn)
        second = await PgStorage.open(postgres_dsn)
        events: list[NodeEvent] = []
        try:
            await first.add_node("node-a", PROXY_INBOUNDS, actor="t")
            for i in range(USERS):
                await first.create_user(
                    f"u{i}", actor="t", expires_at_ms=NOW + 1000, node_ids=["node-a"], at_ms=NOW
                )
            with (
                first.notifier.subscribe("node-a", events.append),
                second.notifier.subscribe("node-a", events.append),
            ):
                passes = (first.enforce(NOW + 2000), second.enforce(NOW + 2000))
                decided = await asyncio.gather(*passes)
            audit = [e.subject for e in await first.audit_log() if e.action == "suspend"]
        finally:
            await first.close()
            await second.close()
        return decided, audit, events

    decided, audit, events = asyncio.run(main())
    assert sorted(len(d) for d in decided) == [0, USERS]  # one pass decided, the other saw it
    assert sorted(audit) == sorted(f"u{i}" for i in range(USERS))
    assert len([c for e in events for c in e.commands]) == USERS


def test_users_created_through_two_replicas_at_once_never_collide(postgres_dsn: str):
    async def main():
        first = await PgStorage.open(postgres_dsn)
        second = await PgStorage.open(postgres_dsn)
        try:
            await first.add_node("node-a", PROXY_INBOUNDS, actor="t")
            made = await asyncio.gather(
                *(
                    (first, second)[i % 2].create_user(f"u{i}", actor="t", node_ids=["node-a"])
                    for i in range(USERS)
                )
            )
            same = await asyncio.gather(
                first.create_user("x", actor="t"),
                second.create_user("x", actor="t"),
                return_exceptions=True,
            )
        finally:
            await first.close()
            await second.close()
        return made, same

    made, same = asyncio.run(main())
    assert len({user.wg_address for user in made}) == USERS
    assert len({user.uuid for user in made}) == USERS
    refused = [outcome for outcome in same if isinstance(outcome, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict), same


def test_leases_granted_through_two_replicas_at_once_never_exceed_what_remains(
    postgres_dsn: str,
):
    async def main():
        first = await PgStorage.open(postgres_dsn)
        second = await PgStorage.open(postgres_dsn)
        try:
            for node in ("node-a", "node-b", "node-c"):
                await first.add_node(node, PROXY_INBOUNDS, actor="t")
            users = [f"u{i}" for i in range(USERS)]
            for user in users:
                await first.create_user(user, actor="t", data_limit_bytes=1000, node_ids=["node-c"])
            await first.grant_leases("node-c")  # node-c holds everything: 1000 each
            for user in users:
                await first.assign(user, "node-a", actor="t")
                await first.assign(user, "node-b", actor="t")
                await first.top_up(user, 300, actor="t")  # 300 unleased bytes each
            # node-a's replica and node-b's replica grant at the same time.
            await asyncio.gather(first.grant_leases("node-a"), second.grant_leases("node-b"))
            return [await first.leases_held(user) for user in users]
        finally:
            await first.close()
            await second.close()

    held = asyncio.run(main())
    assert all(sum(by_node.values()) == 1300 for by_node in held), held[:3]
    assert all(by_node["node-c"] == 1000 for by_node in held)


def test_two_nodes_reporting_the_same_users_through_two_replicas_never_deadlock(
    postgres_dsn: str,
):
    """Each node lists its users in its own order. With the plan a large users table
    gets (an index nested loop, forced here), an UPDATE locks rows in the order it is
    given them: two orders would deadlock unless the rows are locked in one order."""
    users = [f"u{i:03}" for i in range(200)]

    async def main():
        conn = await asyncpg.connect(postgres_dsn)
        try:
            database = await conn.fetchval("SELECT current_database()")
            for setting in ("enable_hashjoin", "enable_mergejoin", "enable_seqscan"):
                await conn.execute(f'ALTER DATABASE "{database}" SET {setting} = off')
        finally:
            await conn.close()
        first = await PgStorage.open(postgres_dsn)
        second = await PgStorage.open(postgres_dsn)
        try:
            for node_id in ("node-a", "node-b"):
                await first.add_node(node_id, PROXY_INBOUNDS, actor="t")
            for user_id in users:
                await first.create_user(user_id, actor="t", node_ids=["node-a", "node-b"])

            async def report(storage: PgStorage, node_id: str, order: list[str]) -> None:
                for round_ in range(15):
                    start = round_ * len(order) + 1
                    batch = [delta(start + i, u, 1, 2) for i, u in enumerate(order)]
                    await storage.ingest(node_id, batch)

            await asyncio.gather(
                report(first, "node-a", users), report(second, "node-b", users[::-1])
            )
            totals = {(u.uplink_bytes, u.downlink_bytes) for u in await first.list_users()}
        finally:
            await first.close()
            await second.close()
        return totals

    assert asyncio.run(main()) == {(2 * 15, 2 * 2 * 15)}
