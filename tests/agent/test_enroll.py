"""`edgeward-agent enroll` against the real central over real TLS (CliRunner), then the
enrolled node connecting with what enrollment wrote."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.cli import main
from edgeward.agent.config import load
from edgeward.agent.journal import open_journal
from edgeward.agent.node import Node
from edgeward.agent.uplink import Uplink
from edgeward.pki import authority
from edgeward.pki.certs import identity_of, load_cert
from tests.e2e.agent_setup import ADMIN, NODE_INBOUNDS, start_central


@pytest.fixture
def central(tmp_path: Path):
    central = start_central(tmp_path, nodes=())
    central.call(central.storage.add_node, "node-b", NODE_INBOUNDS, actor=ADMIN)
    try:
        yield central
    finally:
        central.stop()


def token(central, node_id: str, now: datetime | None = None, ttl=timedelta(hours=1)) -> str:
    return authority.mint_enrollment_token(
        central.pki.store, node_id, now or datetime.now(UTC), ttl
    )


def tree(directory: Path) -> dict[str, str]:
    """Every file under directory with its content hash: 'nothing written' is equality."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def enroll(central, tmp_path: Path, the_token: str, node_id: str = "node-b"):
    config = tmp_path / "etc" / "agent.toml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(f'state_dir = "{tmp_path / "state"}"\nsample_interval = 3.0\n')
        config.chmod(0o644)
    args = ["enroll", "--central", central.address, "--token", the_token, "--node-id", node_id]
    args += ["--ca-file", str(central.pki.ca_file), "--config", str(config)]
    args += ["--server-name", "localhost"]
    return CliRunner().invoke(main, args), config


def test_enroll_writes_key_cert_and_config_and_the_node_connects(tmp_path, central):
    result, config_path = enroll(central, tmp_path, token(central, "node-b"))
    assert result.exit_code == 0, result.output
    config = load(config_path)
    assert config.node_id == "node-b" and config.central.address == central.address
    assert config.sample_interval == 3.0  # settings already in the file are kept
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o644  # the service user reads it
    key = Path(config.central.key_file)
    assert key.parent == tmp_path / "state" / "pki"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = load_cert(Path(config.central.cert_file).read_bytes())
    assert identity_of(cert).name == "node-b"
    assert Path(config.central.ca_file).read_bytes() == central.pki.ca_file.read_bytes()

    async def connect():
        async with open_journal(config.journal_path) as journal:
            node = await Node.load(journal)
            async with open_island() as island, trio.open_nursery() as nursery:
                uplink = Uplink(node, config, island)
                nursery.start_soon(uplink.run)
                with trio.fail_after(20):
                    while uplink.status.sessions == 0:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    config.journal_path.parent.mkdir(parents=True, exist_ok=True)
    trio.run(connect)


def test_reused_token_is_refused_with_the_reason_and_nothing_written(tmp_path, central):
    the_token = token(central, "node-b")
    first, _ = enroll(central, tmp_path / "first", the_token)
    assert first.exit_code == 0, first.output
    before = tree(tmp_path / "first")
    second, _ = enroll(central, tmp_path / "second", the_token)
    assert second.exit_code == 1
    assert "central refused the enrollment token" in second.output
    assert "used" in second.output.lower()
    assert tree(tmp_path / "first") == before
    assert not (tmp_path / "second" / "state").exists()


@pytest.mark.parametrize(
    ("minted_for", "minted_at", "why"),
    [
        ("node-c", None, "node"),  # bound to another node
        ("node-b", datetime.now(UTC) - timedelta(days=3), "expired"),
    ],
)
def test_foreign_or_expired_token_is_refused(tmp_path, central, minted_for, minted_at, why):
    result, config_path = enroll(central, tmp_path, token(central, minted_for, minted_at))
    assert result.exit_code == 1
    assert "central refused the enrollment token" in result.output
    assert why in result.output.lower()
    assert not (tmp_path / "state").exists()
    assert "node_id" not in config_path.read_text()


def test_unreachable_central_is_a_clear_error(tmp_path, central):
    the_token = token(central, "node-b")
    central.stop()
    result, _ = enroll(central, tmp_path, the_token)
    assert result.exit_code == 1
    assert f"cannot reach central at {central.address}" in result.output


def test_enrolling_as_root_hands_the_pki_files_to_the_state_dir_owner(tmp_path, central):
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): chown to the service user")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # the package's service user, in production
    result, config_path = enroll(central, tmp_path, token(central, "node-b"))
    assert result.exit_code == 0, result.output
    config = load(config_path)
    for path in (config.central.key_file, config.central.cert_file, config.central.ca_file):
        assert (Path(path).stat().st_uid, Path(path).stat().st_gid) == (65534, 65534)
    assert Path(config.central.key_file).parent.stat().st_uid == 65534
    assert stat.S_IMODE(Path(config.central.key_file).stat().st_mode) == 0o600
