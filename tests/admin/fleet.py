"""A real central (own thread, own asyncio loop) with a real CA and admin certificates
of every role, and the `edgeward` CLI pointed at it through CliRunner. central opens
its storage from the config, as `edgeward-central run` does: a SQLite file or a
PostgreSQL database (the tests' storage_backend)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result

from edgeward.central.server import serve
from edgeward.cli import main
from edgeward.pki import authority
from edgeward.proto import v1
from tests.central.backends import StorageBackend
from tests.central.helpers import (
    WAIT,
    Pair,
    TestPki,
    central_config,
    make_pki,
    node_stream,
    write_pair,
)
from tests.support.ports import free_port

ROLES = ("admin", "operator", "viewer")


@dataclasses.dataclass
class Fleet:
    pki: TestPki
    backend: StorageBackend
    port: int
    subscription_port: int
    admins: dict[str, Pair]
    loop: asyncio.AbstractEventLoop

    def cli(self, *args: str, role: str = "admin", input: str | None = None) -> Result:
        pair = self.admins[role]
        options = ["--central", f"127.0.0.1:{self.port}", "--cert", str(pair.cert),
                   "--key", str(pair.key), "--ca", str(self.pki.ca_file)]  # fmt: skip
        return CliRunner().invoke(main, [*options, *args], input=input, catch_exceptions=False)

    def ok(self, *args: str, role: str = "admin", input: str | None = None) -> Result:
        result = self.cli(*args, role=role, input=input)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}: {result.output}"
        return result

    def json(self, *args: str, role: str = "admin") -> object:
        return json.loads(self.ok(*args, "--json", role=role).stdout)

    def dump(self) -> str:
        """Every table but node_links (connection state, flushed as streams open and close)."""
        return asyncio.run(self.backend.dump(skip=("node_links",)))

    def run(self, coroutine, timeout: float = WAIT * 3):
        """Run a coroutine on central's loop (e.g. a node's stream) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, coroutine) -> asyncio.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)


@contextlib.contextmanager
def running_fleet(tmp_path: Path, backend: StorageBackend | None = None) -> Iterator[Fleet]:
    """backend: where central's database lives (default: a SQLite file in tmp_path)."""
    pki = make_pki(tmp_path)
    now = datetime.now(UTC)
    admins = {
        role: write_pair(tmp_path / "admins", role,
                         authority.issue_admin(pki.store, f"{role}-one", role, now))
        for role in ROLES
    }  # fmt: skip
    if backend is None:
        backend = StorageBackend("sqlite", tmp_path / "central.sqlite")
    sub_port = free_port()
    config = dataclasses.replace(
        central_config(pki, backend.location),
        subscription_host="127.0.0.1",
        subscription_port=sub_port,
        subscription_url=f"http://127.0.0.1:{sub_port}",
    )
    started = threading.Event()
    state: dict = {}

    def run_central() -> None:
        # trio_asyncio (imported by tests/conftest.py) keeps the loop policy per thread:
        # give this thread asyncio's own, as conftest does for the main thread.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

        async def main_task() -> None:
            state["loop"] = asyncio.get_running_loop()
            state["shutdown"] = asyncio.Event()

            def ready(port: int) -> None:
                state["port"] = port
                started.set()

            try:
                await serve(config, shutdown=state["shutdown"], ready=ready)
            except BaseException as e:
                state["error"] = e
                started.set()
                raise

        with contextlib.suppress(Exception):
            asyncio.run(main_task())

    thread = threading.Thread(target=run_central, name="central", daemon=True)
    thread.start()
    assert started.wait(WAIT), "central did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield Fleet(pki, backend, state["port"], sub_port, admins, state["loop"])
    finally:
        state["loop"].call_soon_threadsafe(state["shutdown"].set)
        thread.join(WAIT * 2)
        assert not thread.is_alive(), "central did not stop"


class ConnectedNode:
    """A node's stream held open on central's loop until close()."""

    def __init__(self, fleet: Fleet, node_id: str, hello: v1.Hello) -> None:
        self.fleet = fleet
        self.node_id = node_id
        self.hello = hello
        self.connected = threading.Event()
        self.messages: list[tuple[str, object]] = []
        self._stop: asyncio.Event | None = None
        self._future: asyncio.Future | None = None

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        pair = self.fleet.pki.node(self.node_id)
        async with node_stream(self.fleet.port, self.fleet.pki, pair) as node:
            await node.send(hello=self.hello)
            self.messages.append(await node.recv())  # welcome
            self.messages.append(await node.recv())  # snapshot
            self.node = node
            self.connected.set()
            await self._stop.wait()

    def __enter__(self) -> ConnectedNode:
        self._future = self.fleet.start(self._run())
        assert self.connected.wait(WAIT), "node did not connect"
        return self

    def send(self, **kind: object) -> None:
        self.fleet.run(self.node.send(**kind))

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._future is not None
        self.fleet.loop.call_soon_threadsafe(self._stop.set)
        self._future.result(WAIT * 2)
