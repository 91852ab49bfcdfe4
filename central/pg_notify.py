"""Node change notifications across central replicas: PostgreSQL LISTEN/NOTIFY.

Each replica's storage issues `pg_notify` inside the transaction that bumps a
node's revision, so PostgreSQL delivers it exactly when (and only if) the
change commits. `PgNotifier` LISTENs on a dedicated connection and hands every
other replica's notifications to the streams connected here; the replica's
own changes are still delivered locally, right after the commit, as with
LocalNotifier (its own notifications are recognised by the writer's backend pid
and skipped).

A payload is small (PostgreSQL allows < 8000 bytes): the node and its new
revision, plus the enforcement commands when they fit; when they do not, the
stream reads the change from storage (the desired state carries every user's
suspension, so nothing is lost, only the early Enforcement message).

The same channel ends streams on other replicas (`stop_before_ms`): when a node
connects to one replica, its older stream elsewhere (a connection that has not
noticed yet that the node left) ends; so does every stream of a revoked node.

When the LISTEN connection is lost, notifications sent meanwhile are gone: the
notifier reconnects (bounded backoff) and then gives every connected stream
its node's current revision, so each re-checks storage and misses nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Self

import asyncpg

from edgeward.proto import v1

from .notify import LocalNotifier, NodeEvent

log = logging.getLogger("edgeward.central.pg_notify")

CHANNEL = "edgeward_node_changes"
MAX_PAYLOAD = 7900  # PostgreSQL's limit is 8000 bytes (default build)
CONNECT_SECONDS = 10.0
# A silently dead LISTEN connection is found by a ping at this pace.
PING_EVERY_SECONDS = 2.0
PING_TIMEOUT_SECONDS = 5.0
RECONNECT_MIN_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0

NOTIFY_ALL = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS t(payload)"
SELECT_REVISIONS = "SELECT node_id, revision FROM nodes WHERE node_id = ANY($1::text[])"


class BadPayload(ValueError):
    """A notification on the channel that is not one of ours."""


def encode(event: NodeEvent) -> str:
    """The NOTIFY payload of an event: commands only if the whole fits MAX_PAYLOAD."""
    body: dict[str, Any] = {"node": event.node_id, "revision": event.revision}
    if event.stop_before_ms:
        body["stop_before_ms"] = event.stop_before_ms
    if event.commands:
        commands = bytes(v1.Enforcement(commands=list(event.commands)))
        with_commands = {**body, "commands": base64.b64encode(commands).decode()}
        text = json.dumps(with_commands, separators=(",", ":"))
        if len(text.encode()) <= MAX_PAYLOAD:
            return text
    text = json.dumps(body, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        raise ValueError(f"node id too long for a notification: {event.node_id[:40]!r}...")
    return text


def decode(payload: str) -> NodeEvent:
    try:
        body = json.loads(payload)
        node_id, revision = body["node"], body["revision"]
        stop_before_ms = body.get("stop_before_ms", 0)
        commands: tuple[v1.Command, ...] = ()
        if "commands" in body:
            enforcement = v1.Enforcement.parse(base64.b64decode(body["commands"]))
            commands = tuple(enforcement.commands)
    except (ValueError, KeyError, TypeError) as e:
        raise BadPayload(f"not a node change notification: {payload[:80]!r}") from e
    if not all(
        isinstance(v, t) for v, t in ((node_id, str), (revision, int), (stop_before_ms, int))
    ):
        raise BadPayload(f"not a node change notification: {payload[:80]!r}")
    return NodeEvent(node_id, revision, commands, stop_before_ms)


async def notify_in_transaction(conn: Any, events: Sequence[NodeEvent]) -> None:
    """Queue one notification per event on conn's open transaction (sent at COMMIT);
    outside a transaction each is sent at once."""
    if events:
        await conn.execute(NOTIFY_ALL, CHANNEL, [encode(event) for event in events])


class PgNotifier:
    """Local fan-out plus the other replicas' changes, heard on a LISTEN connection."""

    def __init__(self, dsn: str, local_backend_pids: set[int]) -> None:
        self._dsn = dsn
        self._local = LocalNotifier()
        # Backends whose notifications this replica already delivered itself.
        self.local_backend_pids = local_backend_pids
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.backend_pid: int | None = None  # of the LISTEN connection
        self._conn: Any = None  # the LISTEN connection, while there is one
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, dsn: str, local_backend_pids: set[int]) -> Self:
        """Listening before it returns (raises if the first connection fails)."""
        notifier = cls(dsn, local_backend_pids)
        try:
            await notifier._listen()
        except BaseException:
            notifier._drop()
            raise
        notifier._task = asyncio.create_task(notifier._keep_listening())
        return notifier

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop()  # also when the task was cancelled before it ever ran

    def publish(self, event: NodeEvent) -> None:
        self._local.publish(event)

    def subscribe(
        self, node_id: str, deliver: Callable[[NodeEvent], None]
    ) -> AbstractContextManager[None]:
        return self._local.subscribe(node_id, deliver)

    async def _listen(self) -> Any:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_SECONDS)
        self._conn = conn
        await conn.add_listener(CHANNEL, self._heard)
        self.backend_pid = conn.get_server_pid()
        self.connected.set()
        return conn

    def _drop(self) -> None:
        self.connected.clear()
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid in self.local_backend_pids:
            return
        try:
            event = decode(payload)
        except BadPayload as e:
            log.warning("%s", e)
            return
        self._local.publish(event)

    async def _keep_listening(self) -> None:
        """Ping the LISTEN connection; when it is lost, reconnect and re-check every node.
        Any failure only costs a reconnect: this task must outlive every error."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            if self._conn is not None:
                try:
                    await self._watch(self._conn)
                except Exception as e:
                    log.warning("lost the LISTEN connection to PostgreSQL: %r", e)
                self._drop()
            await asyncio.sleep(delay)
            try:
                conn = await self._listen()
                await self._recheck(conn)
            except Exception as e:
                log.warning("reconnecting to PostgreSQL for notifications: %r", e)
                self._drop()
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            self.reconnects += 1
            delay = RECONNECT_MIN_SECONDS
            log.info("listening for node changes again (reconnect %d)", self.reconnects)

    async def _watch(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_EVERY_SECONDS)
            if not lost.is_set():
                await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_TIMEOUT_SECONDS)
        raise ConnectionError("the LISTEN connection closed")

    async def _recheck(self, conn: Any) -> None:
        """Changes committed while not listening: each stream compares its node's revision."""
        nodes = self._local.subscribed_nodes()
        if not nodes:
            return
        rows = await asyncio.wait_for(conn.fetch(SELECT_REVISIONS, nodes), PING_TIMEOUT_SECONDS)
        for node_id, revision in rows:
            self._local.publish(NodeEvent(node_id, revision))
