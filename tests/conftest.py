"""Shared fixtures on real parts. Each part's fixtures live in tests/support."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.v2ray import BlobServer, V2rayCore, v2ray_binary
from tests.support.wgnet import kernel_wg_pair, wg_pair  # noqa: F401 (fixtures)


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
