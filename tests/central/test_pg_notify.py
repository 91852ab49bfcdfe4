"""Node changes across central replicas (LISTEN/NOTIFY on a real PostgreSQL): a change
committed through one replica's storage reaches the streams subscribed on another, once,
only if it commits, and a lost LISTEN connection is re-established without missing any."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from edgeward.central import pg_notify
from edgeward.central.notify import NodeEvent
from edgeward.central.pg_storage import PgStorage
from edgeward.proto import v1
from tests.central.helpers import PROXY_INBOUNDS, WAIT

SUSPEND = v1.Command("alice", v1.Action.SUSPEND, v1.Reason.QUOTA)


def test_payload_round_trip_and_commands_left_out_when_too_big():
    event = NodeEvent("node-a", 7, (SUSPEND,))
    assert pg_notify.decode(pg_notify.encode(event)) == event
    stop = NodeEvent("node-a", 0, stop_before_ms=1_800_000_000_000)
    assert pg_notify.decode(pg_notify.encode(stop)) == stop
    many = tuple(
        v1.Command(f"user-{i:05d}", v1.Action.SUSPEND, v1.Reason.EXPIRED) for i in range(2000)
    )
    big = pg_notify.encode(NodeEvent("node-a", 8, many))
    assert len(big.encode()) <= pg_notify.MAX_PAYLOAD
    assert pg_notify.decode(big) == NodeEvent("node-a", 8)  # the stream reads storage instead


@pytest.mark.parametrize(
    "payload",
    ["", "{", '{"node": 1, "revision": 2}', '{"node": "n"}', '{"node": "n", "revision": 1,'
     ' "stop_before_ms": "x"}'],
)  # fmt: skip
def test_a_foreign_payload_is_refused(payload: str):
    with pytest.raises(pg_notify.BadPayload):
        pg_notify.decode(payload)


async def _events_until(events: list[NodeEvent], predicate, what: str) -> None:
    """Wait (bounded) until predicate(events) holds."""
    try:
        async with asyncio.timeout(WAIT):
            while not predicate(events):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no {what} within {WAIT}s: {events}") from None


async def _two_replicas(dsn: str) -> tuple[PgStorage, PgStorage]:
    first = await PgStorage.open(dsn, listen=True)
    second = await PgStorage.open(dsn, listen=True)
    await first.add_node("node-a", PROXY_INBOUNDS, actor="t")
    await first.create_user("alice", actor="t", data_limit_bytes=1000, node_ids=["node-a"])
    return first, second


def test_a_change_on_one_replica_reaches_a_stream_on_the_other_once(postgres_dsn: str):
    async def main():
        first, second = await _two_replicas(postgres_dsn)
        on_first: list[NodeEvent] = []
        on_second: list[NodeEvent] = []
        try:
            with (
                first.notifier.subscribe("node-a", on_first.append),
                second.notifier.subscribe("node-a", on_second.append),
            ):
                user = await first.set_suspended("alice", True, actor="admin:root", why="t")
                await _events_until(on_second, bool, "the suspension on the second replica")
                revision = (await second.snapshot("node-a")).revision
                await asyncio.sleep(0.2)  # a duplicate, if any, would have arrived by now
        finally:
            await first.close()
            await second.close()
        return user, revision, on_first, on_second

    user, revision, on_first, on_second = asyncio.run(main())
    assert user.admin_suspended
    assert [e.revision for e in on_first] == [revision]  # its own change: delivered locally
    assert on_second == on_first  # the same event, heard over LISTEN, once


def test_enforcement_commands_travel_with_the_notification(postgres_dsn: str):
    async def main():
        first, second = await _two_replicas(postgres_dsn)
        heard: list[NodeEvent] = []
        try:
            with second.notifier.subscribe("node-a", heard.append):
                await first.ingest("node-a", [(1, "alice", int(v1.Engine.PROXY), "e", 600, 400, 1)])
                await _events_until(heard, bool, "the quota suspension")
        finally:
            await first.close()
            await second.close()
        return heard

    heard = asyncio.run(main())
    assert [e.commands for e in heard] == [(SUSPEND,)]


def test_a_rolled_back_change_notifies_nobody(postgres_dsn: str):
    async def main():
        first, second = await _two_replicas(postgres_dsn)
        heard: list[NodeEvent] = []
        try:
            with second.notifier.subscribe("node-a", heard.append):
                with pytest.raises(RuntimeError):
                    async with first._write() as tx:
                        tx.touch("node-a", "alice")
                        await first._bump_revisions(tx)  # NOTIFY queued in the transaction
                        raise RuntimeError("abort")
                await first.set_suspended("alice", True, actor="t", why="after")
                await _events_until(heard, bool, "the committed change")
                revision = (await second.snapshot("node-a")).revision
        finally:
            await first.close()
            await second.close()
        return heard, revision

    heard, revision = asyncio.run(main())
    assert [e.revision for e in heard] == [revision]  # only the committed one


def test_a_lost_listen_connection_reconnects_and_every_stream_rechecks(postgres_dsn: str):
    async def main():
        first, second = await _two_replicas(postgres_dsn)
        heard: list[NodeEvent] = []
        admin = await asyncpg.connect(postgres_dsn)
        try:
            with second.notifier.subscribe("node-a", heard.append):
                listener = second.notifier
                # A change no notification announces (lost with the connection).
                revision = await admin.fetchval(
                    "UPDATE nodes SET revision = revision + 1 WHERE node_id = 'node-a'"
                    " RETURNING revision"
                )
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener.backend_pid)
                await _events_until(
                    heard, lambda got: any(e.revision == revision for e in got), "a re-check"
                )
                reconnects = listener.reconnects
                # Listening again: the next change is heard as usual.
                await first.set_suspended("alice", True, actor="t", why="after")
                await _events_until(
                    heard, lambda got: got[-1].revision == revision + 1, "the next change"
                )
        finally:
            await admin.close()
            await first.close()
            await second.close()
        return reconnects

    assert asyncio.run(main()) >= 1
