"""The asyncio island, against a real grpclib server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import trio
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward.agent.aio_bridge import GrpcClient, UnaryCall, open_island
from edgeward.proto import core
from tests.support.ports import free_port

PATH = "/test.Echo/Echo"


class EchoService:
    """Echoes QueryStats patterns; counts how many calls are in flight at once."""

    def __init__(self, hold_until: int = 1) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        # Calls wait (up to 2 s) until `hold_until` are in flight together, so
        # the concurrency a client reaches does not depend on machine speed.
        self.hold_until = hold_until
        self.gate: asyncio.Event | None = None

    async def echo(self, stream) -> None:
        request = await stream.recv_message()
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.gate is None:
            self.gate = asyncio.Event()
        if self.in_flight >= self.hold_until:
            self.gate.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 2.0)
            await asyncio.sleep(0.001)
            if request.pattern.startswith("fail"):
                raise GRPCError(Status.UNKNOWN, f"{request.pattern} not found.")
            await stream.send_message(
                core.QueryStatsResponse(stat=[core.Stat(name=request.pattern, value=1)])
            )
        finally:
            self.in_flight -= 1

    def __mapping__(self):
        return {
            PATH: Handler(
                self.echo,
                Cardinality.UNARY_UNARY,
                core.QueryStatsRequest,
                core.QueryStatsResponse,
            )
        }


class ClosingServer(Server):
    """A grpclib Server whose stop also drops open connections, like a killed process."""

    def __init__(self, handlers) -> None:
        super().__init__(handlers)
        self.protocols: list = []

    def _protocol_factory(self):
        protocol = super()._protocol_factory()
        self.protocols.append(protocol)
        return protocol


async def start_server(service: EchoService, port: int) -> ClosingServer:
    server = ClosingServer([service])
    await server.start("127.0.0.1", port)
    return server


async def stop_server(server: ClosingServer) -> None:
    server.close()
    for protocol in server.protocols:
        transport = getattr(getattr(protocol, "connection", None), "_transport", None)
        if transport is not None:
            transport.close()
    await server.wait_closed()
    await asyncio.sleep(0.01)


def echo(pattern: str) -> UnaryCall:
    return UnaryCall(PATH, core.QueryStatsRequest(pattern=pattern), core.QueryStatsResponse, 5.0)


async def test_call_many_is_bounded_ordered_and_returns_errors_as_values():
    service = EchoService(hold_until=16)
    port = free_port()
    async with open_island() as island:
        server = await island.run(start_server, service, port)
        client = await GrpcClient.open(island, "127.0.0.1", port)
        calls = [echo(f"fail-{i}" if i % 10 == 3 else f"ok-{i}") for i in range(100)]
        results = await client.call_many(calls, concurrency=16)
        assert service.calls == 100
        assert service.max_in_flight == 16
        for i, result in enumerate(results):
            if i % 10 == 3:
                assert isinstance(result, GRPCError) and result.message == f"fail-{i} not found."
            else:
                assert result.stat[0].name == f"ok-{i}"
        # Already-encoded request bytes go through unchanged.
        raw = UnaryCall(PATH, bytes(core.QueryStatsRequest(pattern="raw")), core.QueryStatsResponse)
        assert (await client.call(raw)).stat[0].name == "raw"
        await island.run(stop_server, server)


async def test_connection_generation_counts_reconnects_and_down_is_an_exception():
    service = EchoService()
    port = free_port()
    async with open_island() as island:
        server = await island.run(start_server, service, port)
        client = await GrpcClient.open(island, "127.0.0.1", port)
        await client.call(echo("a"))
        await client.call(echo("b"))
        assert client.connection_generation == 1
        await island.run(stop_server, server)
        (down,) = await client.call_many([echo("c")])
        assert isinstance(down, OSError | GRPCError) or "Connection" in repr(down)
        server = await island.run(start_server, service, port)
        await client.call(echo("d"))
        assert client.connection_generation == 2
        await island.run(stop_server, server)


async def test_island_runs_beside_other_trio_tasks():
    # The island does not block trio: a trio task keeps ticking during calls.
    service = EchoService()
    port = free_port()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.001)

    async with open_island() as island, trio.open_nursery() as nursery:
        server = await island.run(start_server, service, port)
        client = await GrpcClient.open(island, "127.0.0.1", port)
        nursery.start_soon(ticker)
        await client.call_many([echo(str(i)) for i in range(200)], concurrency=4)
        assert ticks > 5
        await island.run(stop_server, server)
        nursery.cancel_scope.cancel()


def test_only_the_bridge_knows_asyncio():
    """DESIGN.md §3: one agent module crosses into asyncio; the rest is trio."""
    agent = Path(__file__).resolve().parents[2] / "agent"
    pattern = re.compile(
        r"^\s*(import|from)\s+(asyncio|trio_asyncio|grpclib\.client|grpclib\.server|aiosqlite)\b",
        re.M,
    )
    offenders = [
        p.name
        for p in sorted(agent.glob("*.py"))
        if p.name != "aio_bridge.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
