"""Shared fixtures on real parts. Each part's fixtures live in tests/support."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio_asyncio  # noqa: F401 (imported first, on purpose: see below)

from tests.support.postgres import PostgresCluster, postgres_bindir
from tests.support.v2ray import BlobServer, V2rayCore, v2ray_binary
from tests.support.wgnet import kernel_wg_pair, wg_pair  # noqa: F401 (fixtures)

# The agent's tests import trio_asyncio, which makes every later asyncio.run() outside
# trio use its SyncTrioEventLoop; TLS servers (central, the pki test servers) lose
# every connection on that loop. Central never shares a process with trio_asyncio in
# production, so its tests get asyncio's own loop back (trio_asyncio keeps serving
# inside trio: its policy is per thread and only applies outside trio).
asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())

if TYPE_CHECKING:
    from tests.central.backends import StorageBackend

BACKENDS = ["sqlite", "postgresql"]


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One private PostgreSQL cluster for the whole session (central and admin tests)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (run the README's setup command)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """A fresh database on the session's cluster."""
    return postgres_cluster.new_database()


def _backend(request: pytest.FixtureRequest, directory: Path) -> StorageBackend:
    # Imported here: the agent's tests never load central.
    from tests.central.backends import StorageBackend

    if request.param == "sqlite":
        return StorageBackend("sqlite", directory / "c.sqlite")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return StorageBackend("postgresql", cluster.new_database())


@pytest.fixture(params=BACKENDS)
def storage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    """Each test using it runs on SQLite (a real file) and PostgreSQL (a fresh database
    on the session's cluster)."""
    return _backend(request, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def module_storage_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StorageBackend:
    """storage_backend for module-scoped fixtures (one central shared by a module's tests)."""
    return _backend(request, tmp_path_factory.mktemp(f"storage-{request.param}"))
