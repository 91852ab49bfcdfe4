"""Real central for agent tests: `edgeward.central.server.serve` on its own asyncio
loop in a thread of the test process, over real mTLS and a real SQLite file.

The agent side runs under trio (with its trio-asyncio island) in the main thread
or in a child process; central keeps asyncio's own loop (TLS servers need it,
tests/conftest.py). Storage calls (admin actions, reads) are made on central's
loop through `call`, so central's change notifications reach connected nodes.
Stopping and starting again on the same port is how tests cut the uplink.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from edgeward.central.server import serve
from edgeward.central.storage import SqliteStorage
from tests.central.helpers import TestPki, central_config
from tests.support.ports import free_port

T = TypeVar("T")
WAIT = 20.0


class CentralThread:
    def __init__(self, pki: TestPki, database: Path, port: int | None = None) -> None:
        self.pki = pki
        self.database = database
        self.port = port or free_port()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.storage: SqliteStorage | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CentralThread:
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._main, name="central", daemon=True)
        self._thread.start()
        if not self._ready.wait(WAIT):
            raise TimeoutError("central did not start")
        if self._error is not None:
            raise RuntimeError(f"central failed to start: {self._error!r}")
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()  # asyncio's own loop, whatever the policy
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        self.storage = await SqliteStorage.open(self.database)
        try:
            await serve(
                central_config(self.pki, self.database, self.port),
                shutdown=self._shutdown,
                ready=lambda port: self._ready.set(),
                storage=self.storage,
            )
        finally:
            await self.storage.close()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run `await fn(*args, **kwargs)` on central's loop (blocking the caller)."""
        assert self.loop is not None, "central is not running"
        future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop)
        return future.result(WAIT)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self.loop is not None and self._shutdown is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._shutdown.set)
        self._thread.join(WAIT)
        if self._thread.is_alive():
            raise TimeoutError("central did not stop")
        self._thread = None
        self.loop = None
