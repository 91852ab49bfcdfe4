"""Real parts for central's tests: a CA on disk, central serving on a loopback port,
and a minimal node-side client of the stream over real mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import betterproto2
import grpclib.const
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from edgeward.central.config import CentralConfig
from edgeward.central.desired import Inbound
from edgeward.central.server import serve
from edgeward.central.storage import Storage
from edgeward.pki import authority
from edgeward.pki.store import CAStore
from edgeward.pki.tls import client_context
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, encode_usage

STREAM = "/edgeward.v1.NodeService/Stream"
ENROLL = "/edgeward.v1.NodeService/Enroll"
# Every wait in these tests is bounded by this (a hang fails, it does not block CI).
WAIT = 10.0

PROXY_INBOUNDS = [
    Inbound("vless-in", v1.Engine.PROXY, v1.Protocol.VLESS),
    Inbound("trojan-in", v1.Engine.PROXY, v1.Protocol.TROJAN),
    Inbound("wg0", v1.Engine.WIREGUARD),
]


@dataclass
class Pair:
    cert: Path
    key: Path


@dataclass
class TestPki:
    dir: Path
    store: CAStore
    server: Pair

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    def node(self, node_id: str) -> Pair:
        """A fresh node certificate and key, written next to the CA."""
        issued = authority.issue_node(self.store, node_id, datetime.now(UTC))
        return write_pair(self.dir.parent / "nodes", f"{node_id}-{issued.serial}", issued)

    def revoke(self, node_id: str) -> None:
        authority.revoke(self.store, node_id, datetime.now(UTC), "test")


def write_pair(directory: Path, stem: str, issued: authority.Issued) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(issued.cert_pem)
    pair.key.write_bytes(issued.key_pem or b"")
    pair.key.chmod(0o600)
    return pair


def make_pki(directory: Path) -> TestPki:
    now = datetime.now(UTC)  # ssl checks validity against the real clock
    store = CAStore.init(directory / "ca", "central-tests", now)
    server = authority.issue_server(store, "central", ["localhost", "127.0.0.1"], now)
    return TestPki(directory / "ca", store, write_pair(directory / "central", "server", server))


def central_config(pki: TestPki, database: Path | str, port: int = 0) -> CentralConfig:
    return CentralConfig(
        host="127.0.0.1",
        port=port,
        database=database,
        ca_dir=pki.dir,
        cert=pki.server.cert,
        key=pki.server.key,
        enforce_interval=3600.0,
    )


def config_toml(config: CentralConfig) -> str:
    return (
        f'[server]\nlisten = "{config.host}:{config.port}"\n'
        f'[storage]\ndatabase = "{config.database}"\n'
        f'[pki]\nca_dir = "{config.ca_dir}"\ncert = "{config.cert}"\nkey = "{config.key}"\n'
        f"[enforcement]\ninterval_seconds = {config.enforce_interval}\n"
    )


@contextlib.asynccontextmanager
async def running_central(
    pki: TestPki, storage: Storage, database: Path | str
) -> AsyncIterator[int]:
    """central serving `storage` on a fresh loopback port; stopped on exit."""
    shutdown = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            central_config(pki, database),
            shutdown=shutdown,
            ready=started.set_result,
            storage=storage,
        )
    )
    try:
        port = await asyncio.wait_for(asyncio.shield(started), WAIT)
        yield port
    finally:
        shutdown.set()
        await asyncio.wait_for(task, WAIT)


class NodeClient:
    """A node's end of the stream: send messages, receive CentralMessages by kind."""

    def __init__(self, stream) -> None:
        self.stream = stream

    async def send(self, **kind) -> None:
        await self.stream.send_message(v1.NodeMessage(**kind))

    async def hello(self, node_id: str = "", acked_seq: int = 0) -> None:
        await self.send(hello=v1.Hello(node_id=node_id, acked_seq=acked_seq))

    async def recv(self) -> tuple[str, object]:
        message = await asyncio.wait_for(self.stream.recv_message(), WAIT)
        if message is None:
            raise EOFError("central ended the stream")
        return betterproto2.which_one_of(message, "kind")

    async def expect(self, kind: str) -> object:
        got, body = await self.recv()
        assert got == kind, f"expected {kind}, got {got}: {body}"
        return body

    async def refusal(self) -> tuple[v1.StreamError, GRPCError]:
        """Central refusing: a StreamError message, then (once we end our side) the status."""
        kind, body = await self.recv()
        assert kind == "error", f"expected a refusal, got {kind}: {body}"
        await self.stream.end()
        try:
            extra = await asyncio.wait_for(self.stream.recv_message(), WAIT)
            await asyncio.wait_for(self.stream.recv_trailing_metadata(), WAIT)
        except GRPCError as e:
            return body, e
        raise AssertionError(f"refused stream ended without an error status ({extra})")

    async def handshake(self, node_id: str = "", acked_seq: int = 0):
        """Hello -> (Welcome, DesiredSnapshot). A LeaseGrant follows if the node
        serves users with a data limit."""
        await self.hello(node_id, acked_seq)
        welcome = await self.expect("welcome")
        snapshot = await self.expect("snapshot")
        return welcome, snapshot

    async def usage(self, deltas: list[UsageDelta]) -> int:
        """Send a batch and return the acked seq."""
        await self.send(usage=encode_usage(deltas))
        while True:
            kind, body = await self.recv()
            if kind == "ack":
                return body.acked_seq


@contextlib.asynccontextmanager
async def node_stream(port: int, pki: TestPki, client: Pair | None) -> AsyncIterator[NodeClient]:
    ssl = client_context(
        pki.ca_file, client.cert if client else None, client.key if client else None
    )
    channel = Channel("127.0.0.1", port, ssl=ssl)
    try:
        request = channel.request(
            STREAM, grpclib.const.Cardinality.STREAM_STREAM, v1.NodeMessage, v1.CentralMessage,
            timeout=WAIT * 3,
        )  # fmt: skip
        stream = await request.__aenter__()
        try:
            await stream.send_request()
            yield NodeClient(stream)
            with contextlib.suppress(StreamClosedError, StreamTerminatedError):  # ended already
                await stream.cancel()
        finally:
            # The call's status was already seen by the test (or is a cancel): do not
            # raise it again on the way out.
            with contextlib.suppress(GRPCError, StreamTerminatedError):
                await request.__aexit__(None, None, None)
    finally:
        channel.close()
        await asyncio.sleep(0.05)  # let the TLS transport finish closing its socket


def delta(seq: int, user_id: str, up: int = 0, down: int = 0, at_ms: int = 1_000) -> UsageDelta:
    return UsageDelta(seq, user_id, int(v1.Engine.PROXY), "e1", up, down, at_ms)


def dump(database: Path) -> str:
    """The whole database as SQL text (WAL included): 'nothing changed' is equality."""
    conn = sqlite3.connect(database)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()
