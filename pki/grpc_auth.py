"""grpclib glue: check every incoming request's peer certificate and expose the
peer's Identity to handlers through a contextvar."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Collection

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward.pki.errors import InvalidInput, PeerRejected, PkiError, TokenRejected
from edgeward.pki.names import Identity, Kind
from edgeward.pki.tls import peer_cert_der
from edgeward.pki.verify import Verifier, WrongKind

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "edgeward_peer_identity"
)
# The checked peer certificate (DER), e.g. for `authority.renew` on the node stream.
current_peer_cert: contextvars.ContextVar[bytes] = contextvars.ContextVar("edgeward_peer_cert")


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
        der = peer_cert_der(event.peer)
        try:
            identity = verifier.check_peer(der, expect=wanted)
        except PeerRejected as e:
            if on_reject is not None:
                on_reject(event.method_name, e)
            raise rejection_status(e) from None
        current_identity.set(identity)
        assert der is not None  # check_peer refuses a missing certificate
        current_peer_cert.set(der)

    listen(server, RecvRequest, on_recv_request)


def pki_error_status(error: PkiError) -> GRPCError:
    """The gRPC answer for a refused enrollment/renewal: a bad token is a permission
    problem, a bad CSR or node id an invalid argument."""
    if isinstance(error, PeerRejected):
        return rejection_status(error)
    if isinstance(error, TokenRejected):
        return GRPCError(Status.PERMISSION_DENIED, str(error))
    if isinstance(error, InvalidInput):
        return GRPCError(Status.INVALID_ARGUMENT, str(error))
    return GRPCError(Status.FAILED_PRECONDITION, str(error))
