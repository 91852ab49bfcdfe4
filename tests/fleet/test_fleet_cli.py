"""`scripts/fleet` as the quick start runs it: the demo shows a quota suspension and
leaves the fleet running; `down` removes it; Ctrl-C during `up` takes it down."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from edgeward.devfleet import netns
from edgeward.devfleet.layout import make_layout

from .conftest import fleet_or_skip

REPO = Path(__file__).resolve().parents[2]


def fleet_cli(fleet, *args: str) -> list[str]:
    layout = fleet.layout
    return [sys.executable, "-m", "edgeward.devfleet", "--dir", str(layout.dir),
            "--name", layout.name, "--subnet", str(layout.subnet), *args]  # fmt: skip


def test_up_shows_a_suspension_and_leaves_the_fleet_running_until_down(tmp_path):
    fleet = fleet_or_skip(tmp_path)
    try:
        up = subprocess.run(fleet_cli(fleet, "up", "--duration", "60"), cwd=REPO,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        out = up.stdout
        for user, node in (("alice", 1), ("alice", 2), ("bob", 1), ("bob", 2), ("carol", 1)):
            assert f"{user} on node-{node}: served" in out
        assert "SUSPENDED (quota)" in out
        assert "==> carol crossed the trial quota" in out
        assert "20 pings of 1200 bytes answered" in out
        assert "scripts/fleet down" in out
        # still running: every process alive, the network in place
        assert all(fleet.status()["processes"].values())
        assert netns.leftovers(fleet.layout) != []
    finally:
        down = subprocess.run(fleet_cli(fleet, "down"), cwd=REPO, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert netns.leftovers(fleet.layout) == []
    assert not any(fleet.procs.alive(n) for n in fleet.procs.names())


def test_ctrl_c_during_up_takes_the_fleet_down(tmp_path):
    fleet = fleet_or_skip(tmp_path)
    command = fleet_cli(fleet, "up", "--duration", "120")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    lines = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            lines.append(line)
            if "live view" in line or time.monotonic() > deadline:
                break
        assert any("live view" in line for line in lines), "".join(lines)[-2000:]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            fleet.down()
    assert proc.returncode == 130, "".join(lines)[-1000:] + rest[-1000:]
    assert "interrupted: taking the fleet down" in rest
    layout = make_layout(fleet.layout.dir, name=fleet.layout.name, subnet=fleet.layout.subnet)
    assert netns.leftovers(layout) == []
    assert not any(fleet.procs.alive(n) for n in fleet.procs.names())
