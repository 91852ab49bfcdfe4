"""The replay fault: a second connection with the node's own certificate sends
deltas central has already committed (same (node, seq), same content), as a
duplicate or late retransmission would. central must acknowledge and count
nothing twice; the agent's stream is replaced meanwhile and reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import betterproto2
import grpclib.const
from grpclib.client import Channel

from edgeward.central.sqlite_ingest import ledger_rows
from edgeward.devfleet.layout import CENTRAL_PORT, FleetLayout, NodeLayout
from edgeward.pki.tls import client_context
from edgeward.proto import v1
from edgeward.proto.usage_codec import UsageDelta, encode_usage

STREAM = "/edgeward.v1.NodeService/Stream"
WAIT = 10.0


def committed_deltas(database: Path, node_id: str, limit: int) -> list[UsageDelta]:
    """The node's last `limit` deltas in central's ledger, exactly as they were sent."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
        rows = ledger_rows(db, node_id)[-limit:] if limit > 0 else []
    return [UsageDelta(*row[1:8]) for row in rows]


async def _replay(layout: FleetLayout, node: NodeLayout, deltas: list[UsageDelta]) -> int:
    ssl = client_context(layout.pki_dir / "ca.crt", node.cert, node.key)
    channel = Channel(layout.central_address, CENTRAL_PORT, ssl=ssl)
    try:
        async with channel.request(
            STREAM, grpclib.const.Cardinality.STREAM_STREAM, v1.NodeMessage, v1.CentralMessage,
            timeout=WAIT * 2,
        ) as stream:  # fmt: skip
            await stream.send_request()
            await stream.send_message(v1.NodeMessage(hello=v1.Hello(node_id=node.node_id)))
            await stream.send_message(v1.NodeMessage(usage=encode_usage(deltas)))
            while True:
                message = await asyncio.wait_for(stream.recv_message(), WAIT)
                if message is None:
                    raise EOFError("central ended the replay stream before its ack")
                kind, body = betterproto2.which_one_of(message, "kind")
                if kind == "ack" and isinstance(body, v1.Ack):
                    with contextlib.suppress(Exception):
                        await stream.cancel()
                    return body.acked_seq
                if kind == "error" and isinstance(body, v1.StreamError):
                    raise RuntimeError(f"central refused the replay: {body.message}")
    finally:
        channel.close()
        await asyncio.sleep(0.05)  # let the TLS transport finish closing its socket


def replay(layout: FleetLayout, node: NodeLayout, limit: int = 200) -> tuple[int, int]:
    """Replay up to `limit` committed deltas; (deltas replayed, acked seq)."""
    deltas = committed_deltas(layout.central_db, node.node_id, limit)
    if not deltas:
        return 0, 0
    return len(deltas), asyncio.run(_replay(layout, node, deltas))
