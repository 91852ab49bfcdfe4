"""Fixtures for pki tests: a real CA directory on disk and PEM files for TLS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgeward.pki.store import CAStore
from tests.pki.servers import Pki, make_pki

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def store(tmp_path: Path, now: datetime) -> Iterator[CAStore]:
    with CAStore.init(tmp_path / "ca", "test", now) as s:
        yield s


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Pki]:
    made = make_pki(tmp_path)
    yield made
    made.store.close()
