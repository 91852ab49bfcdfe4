"""The agent's only door to asyncio: an asyncio island inside the trio program.

grpclib runs only on asyncio; the agent is trio. `open_island()` starts a
trio-asyncio loop for the lifetime of an `async with`; `island.run(fn, *args)`
runs an asyncio coroutine function there and returns its result to trio. The
rules of DESIGN.md §3 live here and nowhere else:

- grpclib objects are created inside the island (they look up the running loop
  when built);
- crossings are batched: `GrpcClient.call_many` sends a whole list of unary
  calls in one crossing and fans them out inside asyncio with bounded
  concurrency, returning one result per call;
- no asyncio async generator is ever iterated from trio;
- channels are closed from the asyncio side and the loop gets a few turns
  before it exits.

No other agent module imports asyncio, trio_asyncio or grpclib.client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import trio
import trio_asyncio
from grpclib.client import Channel, Handler
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec
from grpclib.protocol import H2Protocol

DEFAULT_CONCURRENCY = 16


class _CorkedTransport:
    """Coalesces grpclib's small writes into one socket send per loop turn.

    grpclib writes each frame batch at once (headers, then data: two sends per
    unary call). On loopback each send also runs the receiver's side of TCP,
    so sends dominate a bulk apply's CPU; one send per loop turn for all the
    calls in flight cuts that. Writes keep their order; only the send moves to
    the end of the current loop turn.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: list[bytes] = []
        self._loop = asyncio.get_event_loop()

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(data)

    def _flush(self) -> None:
        if not self._chunks:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CorkedH2Protocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(cast(asyncio.Transport, _CorkedTransport(transport)))


class _CorkedChannel(Channel):
    # grpclib's connection factory hook (private, stable through 0.4.x).
    def _protocol_factory(self) -> H2Protocol:
        return _CorkedH2Protocol(Handler(), self._config, self._h2_config)


class _PassthroughCodec(ProtoCodec):
    """grpclib's protobuf codec, plus requests given as already-encoded bytes and
    replies asked for as `bytes` (left undecoded for a faster hand-written decoder)."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return bytes(data)
        return super().decode(data, message_type)


class AsyncioIsland:
    """A running asyncio loop inside trio; see open_island()."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._closed = False

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run the asyncio coroutine function `fn(*args)` in the island; return its result."""
        if self._closed:
            raise RuntimeError("the asyncio island is closed")
        return await trio_asyncio.aio_as_trio(fn)(*args)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register an asyncio coroutine function to run (in the island) when it closes."""
        self._closers.append(closer)

    async def _close_in_asyncio(self) -> None:
        for closer in reversed(self._closers):
            # A failing closer must not keep the others from running.
            with contextlib.suppress(Exception):
                await closer()
        self._closers.clear()
        # Let transports finish closing before the loop goes away.
        await asyncio.sleep(0.01)


@asynccontextmanager
async def open_island() -> AsyncIterator[AsyncioIsland]:
    """An asyncio island for the duration of the block; closes everything it holds."""
    async with trio_asyncio.open_loop():
        island = AsyncioIsland()
        try:
            yield island
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(island._close_in_asyncio)()
                island._closed = True


# ---------------------------------------------------------------- grpclib inside the island


@dataclass(frozen=True, slots=True)
class UnaryCall:
    """One unary gRPC call: path, request (message or its encoded bytes), reply class."""

    path: str
    request: Any
    reply_type: type
    timeout: float | None = 10.0


class GrpcClient:
    """A grpclib Channel owned by an island, used from trio.

    `connection_generation` grows by one each time grpclib had to open a new
    HTTP/2 connection (the first one included): a change between two calls
    means the connection was lost in between, e.g. the server restarted.
    """

    def __init__(self, island: AsyncioIsland, channel: Channel) -> None:
        self._island = island
        self._channel = channel
        self._last_protocol: object | None = None
        self.connection_generation = 0

    @classmethod
    async def open(
        cls,
        island: AsyncioIsland,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> GrpcClient:
        async def build() -> Channel:
            from grpclib.config import Configuration

            config = Configuration(ssl_target_name_override=server_hostname or None)
            return _CorkedChannel(
                host, port, ssl=ssl_context, codec=_PassthroughCodec(), config=config
            )

        channel = await island.run(build)
        client = cls(island, channel)
        island.on_close(client._close_in_asyncio)
        return client

    def _note_connection(self) -> None:
        # grpclib keeps one protocol object per HTTP/2 connection (private
        # attribute, stable since 0.3); a new one means it reconnected.
        protocol = getattr(self._channel, "_protocol", None)
        if protocol is not None and protocol is not self._last_protocol:
            self._last_protocol = protocol
            self.connection_generation += 1

    async def _unary(self, call: UnaryCall, sent: asyncio.Event | None = None) -> Any:
        try:
            stream: Any
            async with self._channel.request(
                call.path,
                Cardinality.UNARY_UNARY,
                type(call.request),
                call.reply_type,
                timeout=call.timeout,
            ) as stream:
                await stream.send_message(call.request, end=True)
                if sent is not None:
                    sent.set()
                return await stream.recv_message()
        finally:
            self._note_connection()

    async def _stamped(self, call: UnaryCall, sent: asyncio.Event) -> tuple[Any, float]:
        reply = await self._unary(call, sent)
        # The island's loop runs on trio's clock: this is trio.current_time() then.
        return reply, asyncio.get_running_loop().time()

    async def _then_start(self, first: UnaryCall, second: UnaryCall) -> tuple[Any, PendingReply]:
        reply = await self._unary(first)
        sent = asyncio.Event()
        task = asyncio.ensure_future(self._stamped(second, sent))
        waiter = asyncio.ensure_future(sent.wait())
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        await asyncio.sleep(0)  # one loop turn: the corked request leaves the socket
        return reply, PendingReply(self._island, task)

    async def _many(self, calls: Sequence[UnaryCall], concurrency: int) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        pending = iter(enumerate(calls))

        async def worker() -> None:
            for i, call in pending:
                try:
                    results[i] = await self._unary(call)
                except Exception as e:  # returned, not raised: one result per call
                    results[i] = e

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(calls))))))
        return results

    async def call(self, call: UnaryCall) -> Any:
        """One call; raises what grpclib raised (GRPCError, OSError, TimeoutError...)."""
        return await self._island.run(self._unary, call)

    async def call_then_start(
        self, first: UnaryCall, second: UnaryCall
    ) -> tuple[Any, PendingReply]:
        """`first`, and as soon as its reply is in, `second` put on the wire, in one
        crossing: the server works on `second` while the caller works on the
        first reply. Raises what `first` raised (`second` is then not sent). The
        PendingReply must be awaited (`result()`), or the call's outcome is lost.
        """
        return await self._island.run(self._then_start, first, second)

    async def call_many(
        self, calls: Sequence[UnaryCall], *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> list[Any]:
        """All calls in one crossing, at most `concurrency` in flight.

        Returns one entry per call, in order: the reply, or the Exception it raised.
        """
        if not calls:
            return []
        return await self._island.run(self._many, list(calls), concurrency)

    async def _close_in_asyncio(self) -> None:
        self._channel.close()

    async def aclose(self) -> None:
        await self._island.run(self._close_in_asyncio)


class PendingReply:
    """A unary call already sent (GrpcClient.call_then_start)."""

    def __init__(self, island: AsyncioIsland, task: asyncio.Future[tuple[Any, float]]) -> None:
        self._island = island
        self._task = task
        # A caller that gives up (cancelled, failed first) never asks: the outcome
        # is taken here so asyncio does not report it as never retrieved.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _wait(self) -> tuple[Any, float]:
        return await self._task

    async def result(self) -> tuple[Any, float]:
        """(reply, the trio clock when it arrived); raises what the call raised."""
        return await self._island.run(self._wait)


# ---------------------------------------------------------------- one bidirectional stream


class StreamEnded(Exception):
    """The stream is over; `error` is what ended it (None: the server closed it cleanly)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__(f"stream ended: {error!r}" if error else "stream ended")
        self.error = error


_END = object()
# grpclib's sender does not yield while the HTTP/2 window has room (DESIGN.md §3).
_YIELD_EVERY = 32


class BidiStream:
    """One stream-stream gRPC call kept inside one asyncio coroutine.

    trio moves *lists* of messages across (one crossing per list): `send(msgs)`
    queues them for the asyncio writer, `receive()` returns every message that
    arrived since the last call (waiting for at least one). `end()` half-closes
    our side; `aclose()` cancels the call and closes its channel.
    """

    def __init__(self, island: AsyncioIsland, channel: Channel) -> None:
        self._island = island
        self._channel = channel
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._ended: StreamEnded | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        island: AsyncioIsland,
        host: str,
        port: int,
        path: str,
        request_type: type,
        reply_type: type,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> BidiStream:
        """Open the channel and start the call (the connection is made lazily by grpclib:
        a failure to connect shows up as StreamEnded on the first receive)."""

        async def build() -> BidiStream:
            from grpclib.config import Configuration

            config = Configuration(ssl_target_name_override=server_hostname or None)
            channel = Channel(host, port, ssl=ssl_context, config=config)
            stream = cls(island, channel)
            stream._task = asyncio.ensure_future(stream._pump(path, request_type, reply_type))
            return stream

        stream = await island.run(build)
        island.on_close(stream._close_in_asyncio)
        return stream

    async def _pump(self, path: str, request_type: type, reply_type: type) -> None:
        error: BaseException | None = None
        stream: Any
        try:
            async with self._channel.request(
                path, Cardinality.STREAM_STREAM, request_type, reply_type, timeout=None
            ) as stream:
                await stream.send_request()
                writer = asyncio.ensure_future(self._write(stream))
                try:
                    while True:
                        message = await stream.recv_message()
                        if message is None:
                            break
                        self._inbox.put_nowait(message)
                    await stream.recv_trailing_metadata()  # a non-OK status raises here
                finally:
                    writer.cancel()
                    with contextlib.suppress(BaseException):
                        await writer
        except asyncio.CancelledError:
            error = ConnectionAbortedError("stream closed by this side")
        except Exception as e:  # connection refused/reset, TLS failure, GRPCError
            error = e
        finally:
            self._inbox.put_nowait((_END, error))

    async def _write(self, stream: Any) -> None:
        sent = 0
        while True:
            batch = await self._outbox.get()
            if batch is _END:
                await stream.end()
                return
            for message in batch:
                await stream.send_message(message)
                sent += 1
                if sent % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)

    async def _put(self, batch: Any) -> None:
        self._outbox.put_nowait(batch)

    async def _get_all(self) -> list[Any]:
        items = [await self._inbox.get()]
        while not self._inbox.empty():
            items.append(self._inbox.get_nowait())
        return items

    async def send(self, messages: Sequence[Any]) -> None:
        """Queue messages for sending, in order (one crossing)."""
        if self._ended is not None:
            raise self._ended
        if messages:
            await self._island.run(self._put, list(messages))

    async def end(self) -> None:
        """Half-close: nothing more will be sent (the server may still answer)."""
        if self._ended is None:
            await self._island.run(self._put, _END)

    async def receive(self) -> list[Any]:
        """The messages that arrived, at least one; StreamEnded once the call is over."""
        if self._ended is not None:
            raise self._ended
        items = await self._island.run(self._get_all)
        messages = []
        for item in items:
            if isinstance(item, tuple) and item and item[0] is _END:
                self._ended = StreamEnded(item[1])
                break
            messages.append(item)
        if not messages and self._ended is not None:
            raise self._ended
        return messages

    async def _close_in_asyncio(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._channel.close()
        await asyncio.sleep(0.01)  # let the TLS transport finish closing

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if not self._island._closed:
                await self._island.run(self._close_in_asyncio)
            with contextlib.suppress(ValueError):
                self._island._closers.remove(self._close_in_asyncio)
