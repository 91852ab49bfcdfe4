"""The NodeService handler: one bidirectional stream per connected node.

Order on a stream (central's side):
  node: Hello           -> central: Welcome(node_id, acked_seq), DesiredSnapshot,
                           LeaseGrant (every lease the node holds, re-based on acked_seq)
  node: UsageBatch      -> commit, then Ack(acked_seq), then LeaseGrant if any grew
  (desired state change)-> Enforcement (if commands), DesiredChange (or a snapshot),
                           LeaseGrant for the changed users
  node: Heartbeat       -> Heartbeat
  node: LocalDecisions  -> audit log
  node: RenewRequest    -> RenewResponse, or StreamError("renew-failed")
Everything a session sends comes from one task, in that order, so a LeaseGrant
always follows the Ack it is relative to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import betterproto2
import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from edgeward import __version__
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, decode_columns

from .errors import STORAGE_ERRORS, NodeRefused
from .identity import ENROLL_PATH, STREAM_PATH, current_node
from .ingest import InvalidBatch
from .node_links import NodeLinks
from .notify import NodeEvent
from .records import now_ms
from .storage import Storage

log = logging.getLogger("edgeward.central.stream")

# Messages read ahead of processing: bounds memory; HTTP/2 flow control does the rest.
READ_AHEAD = 8
# grpclib's sender does not yield while the window has room (DESIGN.md §3).
YIELD_EVERY = 32
# How long a refused node has to end its side before the status is sent anyway.
REFUSE_DRAIN_SECONDS = 5.0


def _usage_of(message: v1.NodeMessage) -> v1.UsageBatch | None:
    kind, body = betterproto2.which_one_of(message, "kind")
    return body if kind == "usage" else None


Enroller = Callable[[v1.EnrollRequest], Awaitable[v1.EnrollResponse]]
Renewer = Callable[[str, bytes | None, bytes], Awaitable[v1.RenewResponse]]


async def refuse(stream: grpclib.server.Stream, status: Status, message: str) -> NoReturn:
    """End a stream with `status`, telling the node why in a StreamError first.

    The node should end its side when it reads a StreamError; only then is the
    status sent, because grpclib resets a still-open stream right after a
    non-OK status and the reset can overtake the status on the client.
    """
    with contextlib.suppress(Exception):
        error = v1.StreamError(code=status.name.lower(), message=message)
        await stream.send_message(v1.CentralMessage(error=error))
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSE_DRAIN_SECONDS):
            while await stream.recv_message() is not None:
                pass
    raise GRPCError(status, message)


class Refusal(Exception):
    """Raised inside a session to end the stream through refuse()."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NodeService:
    """grpclib servable for edgeward.v1.NodeService (Stream and Enroll)."""

    def __init__(
        self,
        storage: Storage,
        *,
        enroller: Enroller | None = None,
        renewer: Renewer | None = None,
    ) -> None:
        self.storage = storage
        self.enroller = enroller
        self.renewer = renewer
        self.sessions: set[NodeSession] = set()
        self.links = NodeLinks()  # connection state the admin service shows
        self.stopping = asyncio.Event()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            STREAM_PATH: grpclib.const.Handler(
                self.stream,
                grpclib.const.Cardinality.STREAM_STREAM,
                v1.NodeMessage,
                v1.CentralMessage,
            ),
            ENROLL_PATH: grpclib.const.Handler(
                self.enroll,
                grpclib.const.Cardinality.UNARY_UNARY,
                v1.EnrollRequest,
                v1.EnrollResponse,
            ),
        }

    async def enroll(self, stream: grpclib.server.Stream) -> None:
        request = await stream.recv_message()
        if self.enroller is None:
            raise GRPCError(Status.UNIMPLEMENTED, "enrollment is not configured on this central")
        await stream.send_message(await self.enroller(request))

    async def stream(self, stream: grpclib.server.Stream) -> None:
        node_id = current_node.get(None)
        if node_id is None:
            await refuse(stream, Status.UNAUTHENTICATED, "no node identity on this connection")
        if isinstance(node_id, NodeRefused):
            await refuse(stream, Status.UNAUTHENTICATED, str(node_id))
        if not await self.storage.node_known(node_id):
            await refuse(
                stream, Status.PERMISSION_DENIED, f"node {node_id!r} is not registered with central"
            )
        if self.stopping.is_set():
            await refuse(stream, Status.UNAVAILABLE, "central is shutting down")
        first = await stream.recv_message()
        if first is None:
            return
        which: tuple[str, Any] = betterproto2.which_one_of(first, "kind")
        kind, hello = which
        if kind != "hello":
            await refuse(
                stream, Status.FAILED_PRECONDITION, f"first message must be hello, not {kind}"
            )
        if hello.node_id and hello.node_id != node_id:
            await refuse(
                stream,
                Status.PERMISSION_DENIED,
                f"hello names node {hello.node_id!r} but the certificate is node {node_id!r}",
            )
        # A node reconnecting before its old stream noticed: one session per node,
        # here and on the other central replicas.
        for old in [s for s in self.sessions if s.node_id == node_id]:
            old.inbox.put_nowait(("stop", None))
        session = NodeSession(self, stream, node_id, hello)
        await self.storage.end_other_streams(node_id, session.started_ms)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if not any(s.node_id == node_id for s in self.sessions):
                self.links.disconnected(node_id)

    async def stop(self, grace: float) -> None:
        """Ask every session to finish the message in hand and end its stream;
        wait up to `grace` seconds for them to do so."""
        self.stopping.set()
        for session in list(self.sessions):
            session.inbox.put_nowait(("stop", None))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.01)


class NodeSession:
    def __init__(
        self, service: NodeService, stream: grpclib.server.Stream, node_id: str, hello: v1.Hello
    ) -> None:
        self.service = service
        self.storage = service.storage
        self.stream = stream
        self.node_id = node_id
        self.hello = hello
        self.revision = 0  # desired revision last sent
        self.started_ms = now_ms()
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.read_credit = asyncio.Semaphore(READ_AHEAD)
        self.sent = 0

    async def send(self, **kind: Any) -> None:
        await self.stream.send_message(v1.CentralMessage(**kind))
        self.sent += 1
        if self.sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def run(self) -> None:
        log.info("node %s connected (acked_seq=%d on the node)", self.node_id, self.hello.acked_seq)
        # Subscribe before reading the snapshot so no change falls between them.
        with self.storage.notifier.subscribe(self.node_id, self.on_event):
            acked = await self.storage.acked_seq(self.node_id)
            self.service.links.connected(self.node_id, self.hello, acked)
            await self.send(
                welcome=v1.Welcome(
                    node_id=self.node_id, acked_seq=acked, central_version=__version__
                )
            )
            snapshot = await self.storage.snapshot(self.node_id)
            await self.send(snapshot=snapshot)
            self.revision = snapshot.revision
            leases = await self.storage.grant_leases(self.node_id)
            if leases:
                await self.send(leases=v1.LeaseGrant(leases=leases))
            reader = asyncio.create_task(self.read())
            refusal = None
            try:
                await self.process()
            except Refusal as e:
                refusal = e
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if refusal is not None:
                await refuse(self.stream, refusal.status, refusal.message)
        log.info("node %s disconnected", self.node_id)

    def on_event(self, event: NodeEvent) -> None:
        if not event.stop_before_ms:
            self.inbox.put_nowait(("event", event))
        elif self.started_ms < event.stop_before_ms:  # taken over elsewhere, or revoked
            self.inbox.put_nowait(("stop", None))

    async def read(self) -> None:
        try:
            while True:
                await self.read_credit.acquire()
                message = await self.stream.recv_message()
                if message is None:
                    self.inbox.put_nowait(("end", None))
                    return
                self.inbox.put_nowait(("message", message))
        except Exception as e:  # connection reset, decode error: end the session
            self.inbox.put_nowait(("end", e))

    async def process(self) -> None:
        carried: tuple[str, Any] | None = None  # taken from the inbox, not yet handled
        while True:
            what, item = carried or await self.inbox.get()
            carried = None
            if what == "message":
                self.read_credit.release()
                usage = _usage_of(item)
                if usage is None:
                    await self.on_message(item)
                    continue
                # Usage batches already waiting are committed together (one sync).
                batches = [usage]
                while len(batches) < READ_AHEAD and not self.inbox.empty():
                    carried = self.inbox.get_nowait()
                    usage = _usage_of(carried[1]) if carried[0] == "message" else None
                    if usage is None:
                        break
                    self.read_credit.release()
                    batches.append(usage)
                    carried = None
                self.service.links.seen(self.node_id)
                await self.on_usage(batches)
            elif what == "event":
                await self.on_change(item)
            elif what == "stop":
                await self.send(
                    error=v1.StreamError(code="shutting-down", message="central is stopping")
                )
                return
            else:
                if item is not None:
                    log.info("node %s stream ended: %r", self.node_id, item)
                return

    async def on_message(self, message: v1.NodeMessage) -> None:
        which: tuple[str, Any] = betterproto2.which_one_of(message, "kind")
        kind, body = which
        self.service.links.seen(self.node_id)
        if kind == "heartbeat":
            self.service.links.journal_head(self.node_id, body.journal_head_seq)
            await self.send(heartbeat=v1.Heartbeat(sent_at_ms=now_ms()))
        elif kind == "local_decisions":
            await self.storage.record_local_decisions(self.node_id, body.decisions)
        elif kind == "applied":
            self.service.links.applied(self.node_id, body)
            log.info(
                "node %s applied revision %d: %d/%d users, %d errors",
                self.node_id, body.revision, body.users_applied, body.users_desired,
                len(body.errors),
            )  # fmt: skip
        elif kind == "renew":
            await self.on_renew(body)
        elif kind == "hello":
            raise Refusal(Status.FAILED_PRECONDITION, "hello may only be sent once")

    async def on_usage(self, batches: list[v1.UsageBatch]) -> None:
        """Commit the batches, then ack each. A malformed batch is refused after the
        ones before it are committed and acked."""
        decoded: list[tuple[Sequence[UsageDelta], bytes | None]] = []
        refusal = None
        for batch in batches:
            try:
                decoded.append((decode_columns(batch), bytes(batch)))
            except InvalidBatch as e:
                refusal = Refusal(Status.INVALID_ARGUMENT, str(e))
                break
        if decoded:
            # Folding into totals may follow the commit (sqlite_fold.py); the payload
            # is stored as received.
            try:
                results = await self.storage.ingest_many(self.node_id, decoded, defer=True)
            except STORAGE_ERRORS as e:
                # Nothing was committed (the transaction rolled back) and nothing is
                # acked: the node keeps the batches and sends them again.
                ends = [rows[i][0] for rows, _ in decoded if rows for i in (0, -1)]
                seqs = f"{min(ends)}-{max(ends)}" if ends else "(none)"
                log.error(
                    "node %s: usage seqs %s not stored: %s: %s",
                    self.node_id, seqs, type(e).__name__, e,
                )  # fmt: skip
                raise Refusal(
                    Status.UNAVAILABLE,
                    f"central could not store usage seqs {seqs} ({e});"
                    " nothing was acknowledged: send them again later",
                ) from None
            # Only now are the batches durable: acknowledge them, then the leases.
            for result in results:
                self.service.links.acked(self.node_id, result.acked_seq)  # shown at once
                await self.send(ack=v1.Ack(acked_seq=result.acked_seq))
                if result.leases:
                    await self.send(leases=v1.LeaseGrant(leases=result.leases))
        if refusal is not None:
            raise refusal

    async def on_change(self, event: NodeEvent) -> None:
        if event.commands:
            await self.send(enforcement=v1.Enforcement(commands=list(event.commands)))
        if event.revision <= self.revision:
            return  # already covered by a change or snapshot sent since
        update = await self.storage.desired_change(self.node_id, self.revision)
        if update is None:
            return
        if isinstance(update, v1.DesiredSnapshot):
            await self.send(snapshot=update)
            user_ids = None
        else:
            await self.send(change=update)
            user_ids = [user.user_id for user in update.upserts]
        self.revision = update.revision
        if user_ids != []:
            leases = await self.storage.grant_leases(self.node_id, user_ids)
            if leases:
                await self.send(leases=v1.LeaseGrant(leases=leases))

    async def on_renew(self, request: v1.RenewRequest) -> None:
        if self.service.renewer is None:
            await self.send(
                error=v1.StreamError(code="renew-failed", message="renewal is not configured")
            )
            return
        from edgeward.pki.tls import peer_cert_der

        try:
            response = await self.service.renewer(
                self.node_id, peer_cert_der(self.stream.peer), request.csr_pem
            )
        except Exception as e:  # pki errors carry a message safe to show the node
            await self.send(error=v1.StreamError(code="renew-failed", message=str(e)))
            return
        await self.send(renewed=response)
