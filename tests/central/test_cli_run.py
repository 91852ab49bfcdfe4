"""`edgeward-central run`: a real process, systemd notifications, SIGTERM, config errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, WAIT, central_config, config_toml, make_pki
from tests.support.ports import free_port, wait_listening

CENTRAL = [sys.executable, "-c", "from edgeward.central.cli import main; main()"]


def test_run_notifies_systemd_serves_and_stops_on_sigterm(
    tmp_path: Path, storage_backend: StorageBackend
):
    pki = make_pki(tmp_path)
    database = storage_backend.location
    port = free_port()
    config = tmp_path / "central.toml"
    config.write_text(config_toml(central_config(pki, database, port=port)))
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(WAIT)
    process = subprocess.Popen(
        [*CENTRAL, "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": notify_path},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = notify.recv(4096).decode()
        wait_listening(port, WAIT)
        process.send_signal(signal.SIGTERM)
        # WATCHDOG/STATUS lines may come before it, depending on the ticker's pace;
        # at most a handful, each recv bounded by WAIT.
        messages = [notify.recv(4096).decode()]
        while "STOPPING=1" not in messages[-1] and len(messages) < 20:
            messages.append(notify.recv(4096).decode())
        code = process.wait(WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:")
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert code == 0, stderr
    # It created and migrated its database.
    assert asyncio.run(_node_known(storage_backend)) is False


async def _node_known(backend: StorageBackend) -> bool:
    storage = await backend.open()
    try:
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
        return await storage.node_known("node-b")
    finally:
        await storage.close()


def test_run_with_a_bad_config_says_what_is_wrong(tmp_path: Path):
    config = tmp_path / "central.toml"
    config.write_text('[server]\nlisten = "nowhere"\n[surprise]\n')
    result = subprocess.run(
        [*CENTRAL, "run", "--config", str(config)], capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 1
    assert "unknown section [surprise]" in result.stderr
    missing = subprocess.run(
        [*CENTRAL, "run", "--config", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert missing.returncode == 1
    assert "cannot read config" in missing.stderr and "No such file" in missing.stderr
