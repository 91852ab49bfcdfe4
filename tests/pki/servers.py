"""A real grpclib server behind edgeward's server context and peer check, for the
mTLS and interop tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from grpclib.server import Server

from edgeward.pki import authority
from edgeward.pki.grpc_auth import current_identity, install_peer_check
from edgeward.pki.names import Identity
from edgeward.pki.store import CAStore
from edgeward.pki.tls import client_context, server_context
from edgeward.pki.verify import Verifier
from edgeward.proto import v1
from tests.pki.helpers import PemFiles, write_pair

STATUS_PATH = "/edgeward.v1.AdminService/GetStatus"


@dataclass
class Seen:
    identities: list[Identity] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)


class StatusService(v1.AdminServiceBase):
    """GetStatus answers with the node count = 1 and records who called."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def get_status(self, message: v1.GetStatusRequest) -> v1.GetStatusResponse:
        self.seen.identities.append(current_identity.get())
        return v1.GetStatusResponse(central_version="test", nodes_total=1)


@dataclass
class Pki:
    """A CA on disk plus central's server certificate, for real TLS tests."""

    dir: Path
    store: CAStore
    server: PemFiles

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"


def node_files(pki: Pki, node_id: str, *, issued_at: datetime | None = None) -> PemFiles:
    issued = authority.issue_node(pki.store, node_id, issued_at or datetime.now(UTC))
    return write_pair(pki.dir.parent / "nodes", node_id, issued.cert_pem, issued.key_pem)


@contextlib.asynccontextmanager
async def serving(pki: Pki) -> AsyncIterator[tuple[int, Seen]]:
    """A grpclib server with edgeward's server context and node-only peer check on a
    fresh loopback port."""
    seen = Seen()
    server = Server([StatusService(seen)])
    install_peer_check(
        server,
        Verifier.from_store(pki.store),
        expect="node",
        on_reject=lambda _method, e: seen.rejections.append(e.reason),
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await server.start(sock=sock, ssl=server_context(pki.server.cert, pki.server.key, pki.ca_file))
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()
        await connections_drained(port)


def open_server_side_connections(port: int) -> int:
    """Connections on our loopback `port` still open on the server side (ESTABLISHED or
    CLOSE_WAIT), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] in ("01", "08"):
            count += 1
    return count


async def connections_drained(port: int) -> None:
    """grpclib's close() does not reach connections still in the TLS handshake (e.g. a
    grpcio client's reconnect); asyncio closes them once it reads the client's EOF.
    Give the loop turns until that happened (bounded), so no transport is left to leak."""
    for _ in range(300):
        if open_server_side_connections(port) == 0:
            return
        await asyncio.sleep(0.01)


def context_for(pki: Pki, client: PemFiles | None, ca_file: Path | None = None) -> ssl.SSLContext:
    return client_context(
        ca_file or pki.ca_file,
        client.cert if client else None,
        client.key if client else None,
    )


def make_pki(directory: Path) -> Pki:
    # ssl checks validity against the real clock, so these certificates use it too.
    real_now = datetime.now(UTC)
    store = CAStore.init(directory / "ca", "mtls", real_now)
    server = authority.issue_server(store, "central", ["localhost", "127.0.0.1"], real_now)
    files = write_pair(directory / "central", "server", server.cert_pem, server.key_pem)
    return Pki(directory / "ca", store, files)
