"""The uplink: this node's one mutual-TLS stream to central, kept up forever.

Per connection (central's side of the order: central/stream.py):

    Hello(node id, version, acked seq, journal head seq, desired revision, core epoch)
    <- Welcome(acked_seq)   central's durable high-water mark: the journal drops
                            what central holds (skipping seqs if central is
                            ahead of a replaced journal); sending resumes at
                            central's acked_seq + 1
    <- DesiredSnapshot      applied through the node (journal, then engines)
    -> UsageBatch ...       outbox deltas in seq order, at most `window` batches
                            unacknowledged; a row leaves the journal only on Ack
    <- Ack / LeaseGrant / DesiredChange / Enforcement / Heartbeat / RenewResponse
    -> LocalDecisions       then a Heartbeat: central handles messages in order,
                            so the reply to that heartbeat confirms them
    -> AppliedReport        after engine passes that changed something
    <- StreamError          logged; our side half-closes, central ends the call

A lost connection is retried with exponential backoff and full jitter.
Something malformed from central is logged and refused; nothing changes.
A certificate past its renewal point is renewed over the stream; the new pair
is written atomically and used from the next connection on.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import betterproto2
import trio

from edgeward import __version__
from edgeward.proto import v1
from edgeward.proto.usage_codec import encode_usage

from .aio_bridge import AsyncioIsland, BidiStream, StreamEnded
from .config import AgentConfig
from .journal import AckAheadError
from .node import Node, RefusedInput, crashpoint
from .pki_files import finish_pair_install, install_pair

log = logging.getLogger("edgeward.agent.uplink")

STREAM_PATH = "/edgeward.v1.NodeService/Stream"


class SessionOver(Exception):
    """This connection is done; reconnect (immediately when `immediate`)."""

    def __init__(self, reason: str, *, immediate: bool = False) -> None:
        super().__init__(reason)
        self.immediate = immediate


def backoff_delay(attempt: int, first: float, longest: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(longest, first * 2**attempt)]."""
    ceiling = min(longest, first * (2 ** min(attempt, 30)))
    return rng.uniform(0, ceiling)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"central address {address!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass
class UplinkStatus:
    state: str = "disconnected"  # disconnected | connecting | connected | off
    connected_since_ms: int | None = None
    last_ack_at_ms: int | None = None
    acked_seq: int = 0
    sessions: int = 0
    last_error: str | None = None
    renewed_at_ms: int | None = None
    address: str | None = None  # the central address of the current (or last) connection


class Uplink:
    def __init__(
        self,
        node: Node,
        config: AgentConfig,
        island: AsyncioIsland,
        *,
        core_epoch: Callable[[], str] = lambda: "",
        applied_report: Callable[[], v1.AppliedReport | None] = lambda: None,
        rng: random.Random | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.node = node
        self.journal = node.journal
        self.config = config
        self.island = island
        self.core_epoch = core_epoch
        self.applied_report = applied_report
        self.rng = rng or random.Random()
        self.heartbeat_interval = heartbeat_interval or config.central.heartbeat_interval
        self.status = UplinkStatus()
        self._acked_event = trio.Event()
        self._stream: BidiStream | None = None
        self._heartbeats_sent = 0
        self._heartbeats_answered = 0
        self._decisions_waiting: tuple[int, int] | None = None  # (up to id, heartbeat no.)
        self._last_report: v1.AppliedReport | None = None
        self._renew_key: bytes | None = None
        self._stopping = False
        self._welcomed = False
        self._snapshots = 0  # snapshots seen on this connection
        self._leases_pending = False  # the connection's full lease grant may follow
        self._address_index = 0  # into config.central.all_addresses

    # ------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        central = self.config.central
        while not self._stopping:
            self.status.state = "connecting"
            self._welcomed = welcomed = False
            immediate = False
            try:
                try:
                    welcomed = await self._session()
                except BaseExceptionGroup as group:
                    raise _single(group) from None
            except SessionOver as e:
                immediate = e.immediate
                welcomed = self._welcomed  # a refusal before welcome backs off
                self._note_error(str(e))
            except StreamEnded as e:
                self._note_error(f"stream ended: {_describe(e.error)}")
            except (OSError, ValueError) as e:
                self._note_error(f"{type(e).__name__}: {e}")
            finally:
                self.status.state = "disconnected"
                self.status.connected_since_ms = None
            if self._stopping:
                break
            if not immediate:  # that replica failed us: the next one (one address: itself)
                self._address_index += 1
            attempt = 0 if welcomed else attempt + 1
            delay = (
                0.0
                if immediate
                else backoff_delay(attempt, central.reconnect_min, central.reconnect_max, self.rng)
            )
            log.info("reconnecting to central in %.1fs", delay)
            await trio.sleep(delay)

    def _note_error(self, message: str) -> None:
        self.status.last_error = message
        log.warning("uplink: %s", message)

    async def stop(self, grace: float) -> None:
        """Bounded drain: wait (up to grace seconds) until central acknowledged
        everything in the journal, then end our side of the stream."""
        self._stopping = True
        with trio.move_on_after(grace):
            while self.status.state == "connected":
                stats = await self.journal.outbox_stats()
                if stats.acked_seq >= stats.high_seq:
                    break
                await self._wait_ack(0.2)
        if self._stream is not None:
            with contextlib.suppress(StreamEnded):
                await self._stream.end()

    async def _wait_ack(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._acked_event.wait()

    def _ssl_context(self):
        from edgeward.pki.tls import client_context

        central = self.config.central
        finish_pair_install(Path(central.cert_file), Path(central.key_file))
        for what, path in (
            ("CA certificate", central.ca_file),
            ("node certificate", central.cert_file),
            ("node key", central.key_file),
        ):
            if not Path(path).exists():
                raise FileNotFoundError(
                    f"{what} {path} does not exist (enroll this node: edgeward-agent enroll)"
                )
        return client_context(central.ca_file, central.cert_file, central.key_file)

    # ------------------------------------------------------------ one session

    async def _session(self) -> bool:
        """One connection; returns whether central welcomed us."""
        central = self.config.central
        address = central.all_addresses[self._address_index % len(central.all_addresses)]
        self.status.address = address
        host, port = split_address(address)
        ssl_context = self._ssl_context()
        stream = await BidiStream.open(
            self.island,
            host,
            port,
            STREAM_PATH,
            v1.NodeMessage,
            v1.CentralMessage,
            ssl_context=ssl_context,
            server_hostname=central.server_name or host,
        )
        self._stream = stream
        try:
            stats = await self.journal.outbox_stats()
            hello = v1.Hello(
                node_id=self.config.node_id,
                software_version=__version__,
                acked_seq=stats.acked_seq,
                journal_head_seq=stats.high_seq,
                desired_revision=self.node.revision,
                core_epoch=self.core_epoch(),
            )
            await stream.send([v1.NodeMessage(hello=hello)])
            with trio.fail_after(self.heartbeat_interval * 3):
                first = await stream.receive()
            kind, body = _which(first[0])
            if kind == "error":
                await self._on_error(stream, body)
                return False
            if kind != "welcome":
                raise SessionOver(f"central answered {kind} before welcome")
            cursor = await self._on_welcome(body)
            self._welcomed = True
            self.status.state = "connected"
            self.status.sessions += 1
            self.status.connected_since_ms = _now_ms()
            self._heartbeats_sent = self._heartbeats_answered = 0
            self._snapshots = 0
            self._leases_pending = False
            self._decisions_waiting = None
            self._last_report = None
            log.info("connected to central %s as %s", address, self.config.node_id)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, stream, cursor)
                nursery.start_soon(self._heartbeats, stream)
                await self._maybe_renew(stream)
                await self._receiver(stream, first[1:])
                nursery.cancel_scope.cancel()
            return True
        except trio.TooSlowError:
            raise SessionOver("central did not answer hello in time") from None
        finally:
            self._stream = None
            await stream.aclose()

    async def _on_welcome(self, welcome: v1.Welcome) -> int:
        stats = await self.journal.outbox_stats()
        acked = welcome.acked_seq
        if welcome.node_id and welcome.node_id != self.config.node_id:
            log.warning(
                "central knows this node as %r, config says %r",
                welcome.node_id,
                self.config.node_id,
            )
        if acked > stats.high_seq:
            log.warning(
                "central acknowledged seq %d but the journal never went past %d (journal "
                "replaced?): new deltas continue after %d", acked, stats.high_seq, acked,
            )  # fmt: skip
            await self.journal.skip_seqs_to(acked)
        if acked > stats.acked_seq:
            await self._ack(acked)
        elif acked < stats.acked_seq:
            log.warning(
                "central holds seqs up to %d only, the node had %d acknowledged: "
                "resending what the journal still has", acked, stats.acked_seq,
            )  # fmt: skip
        self.status.acked_seq = max(acked, stats.acked_seq)
        return acked

    async def _ack(self, seq: int) -> None:
        try:
            await self.journal.ack(seq)
        except AckAheadError as e:
            log.error("%s; skipping seqs past it", e)
            await self.journal.skip_seqs_to(seq)
            await self.journal.ack(seq)
        self.status.acked_seq = max(self.status.acked_seq, seq)
        self.status.last_ack_at_ms = _now_ms()
        self._acked_event.set()
        self._acked_event = trio.Event()

    # ------------------------------------------------------------ receiving

    async def _receiver(self, stream: BidiStream, leftover: list[v1.CentralMessage]) -> None:
        pending = list(leftover)
        while True:
            for message in pending:
                await self._on_message(stream, message)
            with trio.move_on_after(self.heartbeat_interval * 3) as scope:
                pending = await stream.receive()
            if scope.cancelled_caught:
                raise SessionOver("central silent for 3 heartbeat intervals")

    async def _on_message(self, stream: BidiStream, message: v1.CentralMessage) -> None:
        kind, body = _which(message)
        try:
            if self._leases_pending and kind != "snapshot":
                # Central sends every lease it grants right after the connection's
                # snapshot, or none: what the node holds beyond that is stale (a
                # limit lifted, a user moved away) and must not suspend anyone.
                self._leases_pending = False
                complete = body if kind == "leases" else v1.LeaseGrant()
                await self.node.grant_leases(complete, complete=True)
                if kind == "leases":
                    return
            if kind == "ack":
                await self._ack(body.acked_seq)
            elif kind == "snapshot":
                await self.node.apply_snapshot(body)
                self._leases_pending = self._snapshots == 0
                self._snapshots += 1
                log.info(
                    "desired state: snapshot rev %d (%d users)", body.revision, len(body.users)
                )
            elif kind == "change":
                if not await self.node.apply_change(body):
                    await stream.end()
                    raise SessionOver(
                        f"desired change on base {body.base_revision} but the node holds "
                        f"{self.node.revision}: reconnecting for a snapshot",
                        immediate=True,
                    )
            elif kind == "enforcement":
                await self.node.apply_enforcement(body)
            elif kind == "leases":
                await self.node.grant_leases(body)
            elif kind == "heartbeat":
                await self._on_heartbeat()
            elif kind == "renewed":
                await self._on_renewed(body)
            elif kind == "error":
                await self._on_error(stream, body)
            elif kind == "welcome":
                log.error("central sent a second welcome; ignored")
        except RefusedInput as e:
            log.error("refused from central: %s (nothing changed)", e)

    async def _on_heartbeat(self) -> None:
        self._heartbeats_answered += 1
        waiting = self._decisions_waiting
        if waiting is not None and self._heartbeats_answered >= waiting[1]:
            await self.journal.mark_decisions_reported(waiting[0])
            self._decisions_waiting = None

    async def _on_error(self, stream: BidiStream, error: v1.StreamError) -> None:
        if error.code == "renew-failed":
            log.error("certificate renewal refused by central: %s", error.message)
            self._renew_key = None
            return
        log.warning("central ended the stream: %s: %s", error.code, error.message)
        with contextlib.suppress(StreamEnded):
            await stream.end()
        # Let central's status arrive (bounded), then reconnect.
        with trio.move_on_after(5):
            with contextlib.suppress(StreamEnded):
                while True:
                    await stream.receive()
        raise SessionOver(f"central: {error.code}: {error.message}")

    # ------------------------------------------------------------ sending

    async def _sender(self, stream: BidiStream, cursor: int) -> None:
        central = self.config.central
        in_flight: list[int] = []  # last seq of each unacknowledged batch
        while True:
            in_flight = [s for s in in_flight if s > self.status.acked_seq]
            if len(in_flight) >= central.window:
                await self._wait_ack(1.0)
                continue
            rows = await self.journal.pending(cursor, central.batch_size)
            if rows:
                await stream.send([v1.NodeMessage(usage=encode_usage(rows))])
                crashpoint("after-send")
                cursor = rows[-1].seq
                in_flight.append(cursor)
                continue
            await self._send_reports(stream)
            await self.node.wait_outbox(0.5)

    async def _send_reports(self, stream: BidiStream) -> None:
        messages = []
        if self._decisions_waiting is None:
            decisions = await self.journal.unreported_decisions()
            if decisions:
                messages.append(
                    v1.NodeMessage(
                        local_decisions=v1.LocalDecisions(
                            decisions=[
                                v1.LocalDecision(
                                    user_id=d.user_id,
                                    action=v1.Action(d.action),
                                    reason=v1.Reason(d.reason),
                                    decided_at_ms=d.decided_at_ms,
                                )
                                for _, d in decisions
                            ]
                        )
                    )
                )
                self._heartbeats_sent += 1
                messages.append(v1.NodeMessage(heartbeat=v1.Heartbeat(sent_at_ms=_now_ms())))
                self._decisions_waiting = (decisions[-1][0], self._heartbeats_sent)
        report = self.applied_report()
        if report is not None and report != self._last_report:
            messages.append(v1.NodeMessage(applied=report))
            self._last_report = report
        await stream.send(messages)

    async def _heartbeats(self, stream: BidiStream) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            self._heartbeats_sent += 1
            head = (await self.journal.outbox_stats()).high_seq
            beat = v1.Heartbeat(sent_at_ms=_now_ms(), journal_head_seq=head)
            await stream.send([v1.NodeMessage(heartbeat=beat)])

    # ------------------------------------------------------------ certificate renewal

    async def _maybe_renew(self, stream: BidiStream) -> None:
        from edgeward.pki.certs import generate_key, key_pem, load_cert, make_csr, should_renew

        cert_file = Path(self.config.central.cert_file)
        cert = load_cert(cert_file.read_bytes())
        if not should_renew(cert, datetime.now(UTC)):
            return
        key = generate_key()
        self._renew_key = key_pem(key)
        log.info("certificate %s is due for renewal: asking central", cert_file)
        csr = make_csr(key, self.config.node_id)
        await stream.send([v1.NodeMessage(renew=v1.RenewRequest(csr_pem=csr))])

    async def _on_renewed(self, response: v1.RenewResponse) -> None:
        if self._renew_key is None:
            log.error("central sent a certificate nobody asked for; ignored")
            return
        from edgeward.pki.certs import load_cert, load_private_key
        from edgeward.pki.errors import PkiError

        try:
            cert = load_cert(response.certificate_pem)
            key = load_private_key(self._renew_key)
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                raise PkiError("the renewed certificate is not for the key this node generated")
        except (PkiError, ValueError) as e:
            log.error("renewed certificate refused: %s (nothing changed)", e)
            return
        central = self.config.central
        await trio.to_thread.run_sync(
            install_pair,
            Path(central.cert_file),
            Path(central.key_file),
            response.certificate_pem,
            self._renew_key,
        )
        self._renew_key = None
        self.status.renewed_at_ms = _now_ms()
        log.info("certificate renewed; the next connection uses it")


_SESSION_ENDINGS = (SessionOver, StreamEnded, OSError, ValueError)


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one exception that ended a session's nursery (cancellations aside)."""
    matched, rest = group.split(_SESSION_ENDINGS)
    if matched is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
        return group
    found: BaseException = matched
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def _which(message: v1.CentralMessage) -> tuple[str, Any]:
    kind, body = betterproto2.which_one_of(message, "kind")
    return kind, body


def _now_ms() -> int:
    return int(time.time() * 1000)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "closed by central"
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
