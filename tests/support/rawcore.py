"""Raw grpclib calls to a proxy core, independent of the agent's driver.

Tests use these to check what the agent did (and the foundation test uses them
to prove the v2ray fixture works) without going through agent code.
"""

from __future__ import annotations

import asyncio

from grpclib.client import Channel
from grpclib.const import Cardinality

from edgeward.proto import core

V2FLY = "v2ray.core."


async def _unary(port: int, path: str, request, reply_type):
    channel = Channel("127.0.0.1", port)
    try:
        async with channel.request(
            path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=5
        ) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()
    finally:
        channel.close()


def raw_add_vless(api_port: int, tag: str, email: str, uuid: str, prefix: str = V2FLY) -> None:
    account = core.TypedMessage(
        type=f"{prefix}proxy.vless.Account", value=bytes(core.VlessAccount(id=uuid))
    )
    operation = core.TypedMessage(
        type=f"{prefix}app.proxyman.command.AddUserOperation",
        value=bytes(core.AddUserOperation(user=core.User(email=email, account=account))),
    )
    request = core.AlterInboundRequest(tag=tag, operation=operation)
    path = f"/{prefix}app.proxyman.command.HandlerService/AlterInbound"
    asyncio.run(_unary(api_port, path, request, core.AlterInboundResponse))


def raw_query_stats(api_port: int, pattern: str, prefix: str = V2FLY) -> dict[str, int]:
    path = f"/{prefix}app.stats.command.StatsService/QueryStats"
    reply = asyncio.run(
        _unary(api_port, path, core.QueryStatsRequest(pattern=pattern), core.QueryStatsResponse)
    )
    return {s.name: s.value for s in reply.stat}


def raw_uptime(api_port: int, prefix: str = V2FLY) -> int:
    path = f"/{prefix}app.stats.command.StatsService/GetSysStats"
    reply = asyncio.run(_unary(api_port, path, core.SysStatsRequest(), core.SysStatsResponse))
    return reply.uptime
