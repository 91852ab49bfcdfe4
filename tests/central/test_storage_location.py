"""central's storage location in its config: a SQLite file or a PostgreSQL URL, and
`edgeward-central run` serving from PostgreSQL (or saying clearly why it cannot)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from edgeward.central.config import parse_config
from edgeward.central.errors import InvalidInput, StorageUnavailable
from edgeward.central.open_storage import open_storage, redacted
from tests.central import helpers
from tests.central.helpers import (
    PROXY_INBOUNDS,
    WAIT,
    central_config,
    config_toml,
    make_pki,
    node_stream,
)
from tests.support.ports import free_port, wait_listening

CENTRAL = [sys.executable, "-c", "from edgeward.central.cli import main; main()"]
DSN = "postgresql://edgeward@db.example:5432/central"


def test_a_postgresql_url_is_kept_as_text_and_a_path_stays_a_path():
    assert parse_config(f'[storage]\ndatabase = "{DSN}"\n').database == DSN
    assert parse_config(f'storage = "{DSN}"\n').database == DSN  # the short form
    socket_dir = "postgres:///central?host=/run/postgresql"
    assert parse_config(f'[storage]\ndatabase = "{socket_dir}"\n').database == socket_dir
    assert parse_config('[storage]\ndatabase = "/var/c.sqlite"\n').database == Path("/var/c.sqlite")


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("mysql://h/db", "unsupported URL scheme 'mysql'"),
        ("postgresql://h:port/db", "not a valid URL"),
        ("postgresql://h:5432/", "needs a host and a database"),
        ("postgresql:///db", "needs a host and a database"),
        ("", "must be a file path or a URL"),
    ],
)
def test_a_bad_storage_location_is_refused(location: str, message: str):
    with pytest.raises(InvalidInput, match=message):
        parse_config(f'[storage]\ndatabase = "{location}"\n')


def test_messages_do_not_show_the_password():
    assert redacted("postgresql://u:secret@h:1/db") == "postgresql://u:***@h:1/db"
    assert redacted(DSN) == DSN


def test_an_unreachable_database_is_a_clear_error():
    dsn = f"postgresql://edgeward:secret@127.0.0.1:{free_port()}/central"
    with pytest.raises(StorageUnavailable, match="cannot open the database") as raised:
        asyncio.run(open_storage(dsn, listen=True))
    assert "secret" not in str(raised.value)


def _write_config(tmp_path: Path, database: str, port: int) -> tuple[Path, helpers.TestPki]:
    pki = make_pki(tmp_path)
    config = tmp_path / "central.toml"
    toml = config_toml(central_config(pki, Path("unused"), port=port))
    config.write_text(toml.replace('database = "unused"', f'database = "{database}"'))
    return config, pki


def test_run_refuses_an_unreachable_database_and_writes_nothing(tmp_path: Path):
    config, pki = _write_config(tmp_path, f"postgresql://edgeward@127.0.0.1:{free_port()}/c", 0)
    pki.store.close()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run(
        [*CENTRAL, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "cannot open the database postgresql://edgeward@127.0.0.1" in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_run_serves_from_postgresql(tmp_path: Path, postgres_dsn: str):
    port = free_port()
    config, pki = _write_config(tmp_path, postgres_dsn, port)
    process = subprocess.Popen(
        [*CENTRAL, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        wait_listening(port, WAIT)
        asyncio.run(_node_connects(pki, postgres_dsn, port))
    finally:
        pki.store.close()
        process.terminate()
        try:
            process.wait(WAIT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.returncode == 0, stderr
    sqlite_files = {p.name for p in tmp_path.rglob("*.sqlite*")}
    assert sqlite_files <= {"pki.sqlite", "pki.sqlite-wal", "pki.sqlite-shm"}  # the CA's own


async def _node_connects(pki: helpers.TestPki, dsn: str, port: int) -> None:
    """Register a node in the database central serves, connect it, see its snapshot."""
    storage = await open_storage(dsn)
    try:
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")  # type: ignore[attr-defined]
    finally:
        await storage.close()
    async with node_stream(port, pki, pki.node("node-a")) as node:
        welcome, snapshot = await node.handshake()
        assert welcome.node_id == "node-a" and snapshot.revision >= 0
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 1
    finally:
        await conn.close()
