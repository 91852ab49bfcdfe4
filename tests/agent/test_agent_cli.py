"""`edgeward-agent` commands: run (a real process: systemd notify, SIGHUP reload, SIGTERM),
status/explain over the real control socket (--json parsed back), config-example,
and clear errors (bad config, corrupt journal, daemon not running)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import trio
from click.testing import CliRunner

from edgeward.agent.cli import main
from edgeward.agent.config import AgentConfig, CoreSettings, parse, to_toml
from edgeward.agent.journal import open_journal
from edgeward.agent.node import Node
from edgeward.proto import v1

AGENT = [sys.executable, "-c", "from edgeward.agent.cli import main; main()"]
WAIT = 20.0


def make_config(tmp_path: Path, api_port: int = 1) -> tuple[AgentConfig, Path]:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    config = AgentConfig(
        node_id="node-a",
        state_dir=str(state),
        control_socket=str(tmp_path / "run" / "control.sock"),
        sample_interval=0.5,
        core=CoreSettings(api=f"127.0.0.1:{api_port}", flavor="v2fly", poll_interval=0.3),
    )
    path = tmp_path / "agent.toml"
    path.write_text(to_toml(config))
    return config, path


def alice_snapshot(secret: str) -> v1.DesiredSnapshot:
    credential = v1.ProxyCredential(
        inbound_tag="vless-in", protocol=v1.Protocol.VLESS, email="alice", secret=secret
    )
    alice = v1.UserSpec(user_id="alice", proxies=[credential])
    return v1.DesiredSnapshot(revision=7, users=[alice])


def seed_journal(config: AgentConfig, snapshot: v1.DesiredSnapshot) -> None:
    async def seed():
        async with open_journal(config.journal_path) as journal:
            node = await Node.load(journal)
            await node.apply_snapshot(snapshot)

    trio.run(seed)


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_config_example_is_the_documented_default_config():
    result = cli("config-example")
    assert result.exit_code == 0
    assert parse(result.output, check=False) == AgentConfig()
    # Every setting carries its one-line description.
    lines = result.output.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line
    assert 'cert_file = "/var/lib/edgeward-agent/pki/node.crt"' in result.output


def test_status_without_a_daemon_and_bad_configs_are_clear_errors(tmp_path):
    _, path = make_config(tmp_path)
    result = cli("status", "--config", str(path))
    assert result.exit_code == 1
    assert "edgeward-agent is not running (no control socket at" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('node_id = "node-a"\nsurprise = 1\n')
    result = cli("status", "--config", str(bad))
    assert result.exit_code == 1 and "unknown setting 'surprise'" in result.output
    result = cli("run", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 1 and "cannot read" in result.output


def test_corrupt_journal_is_a_clear_startup_error_and_left_as_it_was(tmp_path):
    config, path = make_config(tmp_path)
    garbage = b"this is not a journal\n" * 100
    config.journal_path.write_bytes(garbage)
    result = cli("run", "--config", str(path))
    assert result.exit_code == 1
    assert f"journal {config.journal_path}" in result.output
    assert config.journal_path.read_bytes() == garbage


def test_run_serves_from_the_journal_notifies_systemd_reloads_and_stops(tmp_path, v2ray_core):
    config, path = make_config(tmp_path, v2ray_core.api_port)
    secret = str(uuid.uuid4())
    seed_journal(config, alice_snapshot(secret))  # no central: the journal alone is enough
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(WAIT)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"}
    log_path = tmp_path / "agent.log"  # a file, not a pipe nobody reads while it runs
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*AGENT, "run", "--config", str(path)], env=env, stderr=log, stdout=log
        )

    def until(prefix: str) -> list[str]:
        seen: list[str] = []
        try:
            seen.append(notify.recv(4096).decode())
            while not seen[-1].startswith(prefix) and len(seen) < 50:
                seen.append(notify.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {prefix} after {seen}: {log_path.read_text()}") from None
        assert seen[-1].startswith(prefix), seen
        return seen

    try:
        assert until("READY=1")[-1] == "READY=1\nSTATUS=serving 1 users"
        assert any(m.startswith("WATCHDOG=1") for m in until("WATCHDOG=1"))
        # status and explain over the control socket, parsed back from --json.
        status = _wait_status(path, lambda s: s["users_applied"] == 1)
        assert status["revision"] == 7 and status["connection"] == "off"
        assert status["core_reachable"] and status["epoch"]
        result = cli("explain", "alice", "--json", "--config", str(path))
        explained = json.loads(result.output)
        assert explained["served"] and explained["applied"]["proxy"] == ["vless-in/alice"]
        assert explained["desired"]["proxy"] == ["vless-in/alice"]
        human = cli("explain", "alice", "--config", str(path)).output
        assert "user alice: SERVED (active)" in human
        nobody = json.loads(cli("explain", "bob", "--json", "--config", str(path)).output)
        assert not nobody["served"] and nobody["reason"] == "not in this node's desired state"
        assert "node-a (desired revision 7)" in cli("status", "--config", str(path)).output
        # SIGHUP re-reads the config: RELOADING, then READY; the new interval is live.
        path.write_text(to_toml(replace(config, sample_interval=7.0)))
        process.send_signal(signal.SIGHUP)
        assert until("RELOADING=1")[-1].startswith("RELOADING=1\nMONOTONIC_USEC=")
        until("READY=1")
        status = json.loads(cli("status", "--json", "--config", str(path)).output)
        assert (status["sample_interval"], status["reloads"]) == (7.0, 1)
        # A broken config on SIGHUP is refused; the daemon keeps its running config.
        path.write_text("sample_interval = 'soon'\n")
        process.send_signal(signal.SIGHUP)
        until("READY=1")
        status = _status_with(config)  # (the file on disk is broken now)
        assert status["sample_interval"] == 7.0 and status["reloads"] == 1
        process.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        code = process.wait(WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
    stderr = log_path.read_text()
    assert code == 0, stderr
    assert "reload refused, keeping the running config" in stderr
    assert "<6>edgeward.agent.daemon: stopped" in stderr  # journald priority prefix
    assert not Path(config.control_socket).exists()


def _status_with(config: AgentConfig) -> dict:
    from edgeward.agent.control import ask

    return ask(config.control_socket, {"command": "status"})["status"]


def _wait_status(path: Path, predicate) -> dict:
    import time

    deadline = time.monotonic() + WAIT
    while True:
        result = cli("status", "--json", "--config", str(path))
        if result.exit_code == 0:
            status = json.loads(result.output)
            if predicate(status):
                return status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never matched: {result.output}")
        time.sleep(0.1)
