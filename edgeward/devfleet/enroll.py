"""Enrollment through central's Enroll RPC with a single-use token, done by the
fleet on the node's behalf (key and CSR made here, the RPC sent from inside the
node's namespace over TLS verified with the fleet CA).

Used only while the installed agent has no working `edgeward-agent enroll`; the
token, the RPC and central's checks are the same real flow.
"""

from __future__ import annotations

import asyncio
import importlib.util

import grpclib.const
from grpclib.client import Channel

from edgeward.pki import certs
from edgeward.pki.tls import client_context
from edgeward.proto import v1

from .layout import CENTRAL_PORT, FleetLayout, NodeLayout
from .netns import call_in_netns

ENROLL = "/edgeward.v1.NodeService/Enroll"


def agent_can_enroll() -> bool:
    return importlib.util.find_spec("edgeward.agent.enroll") is not None


async def _enroll(layout: FleetLayout, request: v1.EnrollRequest) -> v1.EnrollResponse:
    ssl = client_context(layout.pki_dir / "ca.crt", None, None)
    channel = Channel(layout.central_address, CENTRAL_PORT, ssl=ssl)
    try:
        async with channel.request(
            ENROLL, grpclib.const.Cardinality.UNARY_UNARY, v1.EnrollRequest, v1.EnrollResponse,
            timeout=30,
        ) as stream:  # fmt: skip
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            assert reply is not None
            return reply
    finally:
        channel.close()
        await asyncio.sleep(0.05)  # let the TLS transport finish closing its socket


def enroll_with_token(layout: FleetLayout, node: NodeLayout, token: str) -> None:
    key = certs.generate_key()
    request = v1.EnrollRequest(
        node_id=node.node_id, token=token, csr_pem=certs.make_csr(key, node.node_id)
    )
    reply = call_in_netns(node.ns, lambda: asyncio.run(_enroll(layout, request)))
    node.pki_dir.mkdir(parents=True, exist_ok=True)
    node.ca_file.write_bytes((layout.pki_dir / "ca.crt").read_bytes())
    node.key.touch(mode=0o600)
    node.key.write_bytes(certs.key_pem(key))
    node.cert.write_bytes(reply.certificate_pem)
