"""Which node is on the other end of a request: read from its TLS client certificate.

A grpclib RecvRequest listener runs `identify(peer)` before the handler and
puts the node id in a contextvar the handler reads (the handler runs in the
same task). The node id never comes from a message. `identify` is injected:
`pki_identify` checks the certificate against the CA, its validity and the
revocation list on every new stream.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from grpclib.events import RecvRequest, listen
from grpclib.server import Server

from .errors import NodeRefused

STREAM_PATH = "/edgeward.v1.NodeService/Stream"
ENROLL_PATH = "/edgeward.v1.NodeService/Enroll"

# The node id of a request's peer, or why it was refused; read by the handler,
# which refuses on the stream itself (see stream.refuse) rather than here: a
# status raised from a listener is followed by a stream reset that can overtake
# it on the client side.
current_node: contextvars.ContextVar[str | NodeRefused] = contextvars.ContextVar(
    "edgeward_central_node"
)

Identify = Callable[[object], str]


def install_node_identity(server: Server, identify: Identify) -> None:
    """Identify the peer of every request except Enroll (which a node without a
    certificate calls)."""

    async def on_recv_request(event: RecvRequest) -> None:
        if event.method_name == ENROLL_PATH:
            return
        try:
            current_node.set(identify(event.peer))
        except NodeRefused as e:
            current_node.set(e)

    listen(server, RecvRequest, on_recv_request)


def pki_identify(verifier: object) -> Identify:
    """identify(peer) through edgeward.pki's Verifier: a valid, unrevoked node
    certificate of our CA, or NodeRefused with the reason."""
    from edgeward.pki.errors import PeerRejected
    from edgeward.pki.tls import peer_cert_der

    def identify(peer: object) -> str:
        try:
            identity = verifier.check_peer(peer_cert_der(peer), expect="node")  # type: ignore[attr-defined]
        except PeerRejected as e:
            raise NodeRefused(e.reason) from None
        return identity.name

    return identify
