"""central's real-part fixtures: a private PostgreSQL cluster shared by the session, and
`storage_backend`, which runs a storage test on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.central.backends import StorageBackend
from tests.support.postgres import PostgresCluster, postgres_bindir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    """Each test using it runs on SQLite (a real file) and PostgreSQL (the session cluster)."""
    if request.param == "sqlite":
        return StorageBackend("sqlite", tmp_path / "c.sqlite")
    return StorageBackend("postgresql", request.getfixturevalue("postgres_dsn"))
