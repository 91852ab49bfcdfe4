"""Shared fixtures on real parts. Each part's fixtures live in tests/support."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio_asyncio  # noqa: F401 (imported first, on purpose: see below)

from tests.support.v2ray import BlobServer, V2rayCore, v2ray_binary
from tests.support.wgnet import kernel_wg_pair, wg_pair  # noqa: F401 (fixtures)

# The agent's tests import trio_asyncio, which makes every later asyncio.run() outside
# trio use its SyncTrioEventLoop; TLS servers (central, the pki test servers) lose
# every connection on that loop. Central never shares a process with trio_asyncio in
# production, so its tests get asyncio's own loop back (trio_asyncio keeps serving
# inside trio: its policy is per thread and only applies outside trio).
asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


def require_root() -> None:
    """Skip (with the reason) when not root: namespaces and interfaces need it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, WireGuard interfaces); CI runs as root")


def require_binary(binary_name: str, found: str | None) -> None:
    """Skip (with the reason) when a real part is not installed."""
    if not found:
        pytest.skip(f"{binary_name} is not installed (run the README's setup command)")


@pytest.fixture
def v2ray_core(tmp_path: Path) -> Iterator[V2rayCore]:
    require_binary("v2ray", v2ray_binary())
    core = V2rayCore(workdir=tmp_path / "v2ray")
    core.start()
    try:
        yield core
    finally:
        core.kill()


@pytest.fixture
def http_blob_server() -> Iterator[BlobServer]:
    with BlobServer() as server:
        yield server
