"""grpclib glue: check every incoming request's peer certificate and expose the
peer's Identity to handlers through a contextvar."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Collection

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward.pki.errors import PeerRejected
from edgeward.pki.names import Identity, Kind
from edgeward.pki.tls import peer_cert_der
from edgeward.pki.verify import Verifier, WrongKind

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "edgeward_peer_identity"
)


def rejection_status(error: PeerRejected) -> GRPCError:
    status = Status.PERMISSION_DENIED if isinstance(error, WrongKind) else Status.UNAUTHENTICATED
    return GRPCError(status, error.reason)


def install_peer_check(
    server: Server,
    verifier: Verifier,
    expect: Callable[[str], Kind | None] | Kind | None = None,
    on_reject: Callable[[str, PeerRejected], None] | None = None,
    open_methods: Collection[str] = (),
) -> None:
    """On each request, check the peer and set `current_identity`, or answer
    UNAUTHENTICATED / PERMISSION_DENIED with the reason.

    `expect` is a kind, or a function of the method path returning one (None: any).
    `open_methods` (e.g. "/edgeward.v1.NodeService/Enroll") skip the check and leave
    `current_identity` unset: they serve peers without a certificate.
    """

    async def on_recv_request(event: RecvRequest) -> None:
        if event.method_name in open_methods:
            return
        wanted = expect(event.method_name) if callable(expect) else expect
        try:
            identity = verifier.check_peer(peer_cert_der(event.peer), expect=wanted)
        except PeerRejected as e:
            if on_reject is not None:
                on_reject(event.method_name, e)
            raise rejection_status(e) from None
        current_identity.set(identity)

    listen(server, RecvRequest, on_recv_request)
