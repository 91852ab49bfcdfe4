"""Reading a node's proxy core directly, independent of the agent.

The core's API listens on the loopback of the node's namespace; these calls
enter the namespace from a thread (netns.call_in_netns) and speak raw grpclib
with the neutral proto (v2fly flavor), so what they report is the core's own
view: the reference the chaos harness compares central's totals with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from grpclib.client import Channel
from grpclib.const import Cardinality

from edgeward.proto import core

from .layout import CORE_API_PORT
from .netns import call_in_netns

V2FLY = "v2ray.core."
STATS = f"/{V2FLY}app.stats.command.StatsService"


async def _unary(port: int, path: str, request, reply_type, timeout: float = 5.0):
    channel = Channel("127.0.0.1", port)
    try:
        async with channel.request(
            path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout
        ) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()
    finally:
        channel.close()


@dataclass(frozen=True)
class CoreReading:
    uptime: int  # seconds since the core started (goes down: a restart)
    users: dict[str, tuple[int, int]]  # email -> (uplink, downlink) bytes


def parse_user_stats(stats: dict[str, int]) -> dict[str, tuple[int, int]]:
    """`user>>>EMAIL>>>traffic>>>uplink|downlink` counters -> email -> (up, down)."""
    users: dict[str, list[int]] = {}
    for name, value in stats.items():
        parts = name.split(">>>")
        if len(parts) != 4 or parts[0] != "user" or parts[2] != "traffic":
            continue
        pair = users.setdefault(parts[1], [0, 0])
        pair[0 if parts[3] == "uplink" else 1] = value
    return {email: (up, down) for email, (up, down) in users.items()}


async def _read(port: int) -> CoreReading:
    sys = await _unary(port, f"{STATS}/GetSysStats", core.SysStatsRequest(), core.SysStatsResponse)
    reply = await _unary(
        port, f"{STATS}/QueryStats", core.QueryStatsRequest(pattern="user>>>"),
        core.QueryStatsResponse,
    )  # fmt: skip
    return CoreReading(sys.uptime, parse_user_stats({s.name: s.value for s in reply.stat}))


def read_core(ns: str, port: int = CORE_API_PORT) -> CoreReading:
    """The core's uptime and every user's counters, read inside namespace ns."""
    return call_in_netns(ns, lambda: asyncio.run(_read(port)))


def core_answers(ns: str, port: int = CORE_API_PORT) -> bool:
    try:
        read_core(ns, port)
    except Exception:  # refused, reset, or a gRPC error while the core starts
        return False
    return True
