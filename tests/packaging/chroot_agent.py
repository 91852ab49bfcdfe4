"""The agent service of a chroot "node", and the rollout's transport to such a node.

A chroot has no systemd, so this plays the part of the unit and of the package's
postinst for the rollout test:

- `start`: what `systemctl start edgeward-agent` does with the unit: create the
  RuntimeDirectory and StateDirectory (handing the state to the service user,
  as systemd does), then run `/usr/bin/edgeward-agent run --config
  /etc/edgeward/agent.toml` as the service user, chrooted, in its own session,
  output appended to /var/log/edgeward-agent.log inside the chroot.
- `stop`: SIGTERM, a bounded wait, then SIGKILL (the unit's TimeoutStopSec).
- as a program, the transport: `chroot_agent.py ROOT CMD...` runs CMD inside
  ROOT (stdin passed through: the rollout sends the package there) and, when it
  succeeds, restarts the agent, as the postinst's `systemctl try-restart` does
  on a real node. The restart is unconditional: under systemd a crashing agent
  stays in Restart=on-failure's auto-restart, which try-restart restarts too.

The agent's pid is kept in ROOT/run/chroot-agent.pid; a pid counts only while
its process is alive (not a zombie: the agent is re-parented to this machine's
PID 1, which may not reap) and rooted in ROOT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVICE = "edgeward-agent"
COMMAND = ("/usr/bin/edgeward-agent", "run", "--config", "/etc/edgeward/agent.toml")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
INSTALL_TIMEOUT = 300.0  # the install command run in the chroot
STOP_TIMEOUT = 15.0  # seconds after SIGTERM before SIGKILL; the agent's stop_grace is less


def pid_file(root: Path) -> Path:
    return root / "run" / "chroot-agent.pid"


def log_file(root: Path) -> Path:
    return root / "var" / "log" / f"{SERVICE}.log"


def service_ids(root: Path) -> tuple[int, int]:
    """The service user's uid and gid in the chroot's own /etc/passwd (sysusers made it)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == SERVICE:
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"{root}: no {SERVICE} user (is the package installed?)")


def alive(pid: int, root: Path) -> bool:
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and os.readlink(proc / "root") == str(root.resolve())
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def running_pid(root: Path) -> int | None:
    try:
        pid = int(pid_file(root).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid, root) else None


def service_directory(path: Path, uid: int, gid: int) -> None:
    """RuntimeDirectory= / StateDirectory=: created, and handed (with everything in it)
    to the service user when it is not theirs, as systemd does at start."""
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    if path.stat().st_uid != uid:
        for inner in [path, *path.rglob("*")]:
            os.lchown(inner, uid, gid)


def start(root: Path) -> int:
    uid, gid = service_ids(root)
    service_directory(root / "run" / SERVICE, uid, gid)
    service_directory(root / "var" / "lib" / SERVICE, uid, gid)
    with open(log_file(root), "ab") as log:
        log.write(f"---- start {time.strftime('%H:%M:%S')}\n".encode())
        log.flush()
        # a bare spawn, not a Popen: the agent outlives the command that started it,
        # and no Popen object is left to warn that its process still runs
        pid = os.posix_spawn(
            shutil.which("chroot") or "/usr/sbin/chroot",
            ["chroot", f"--userspec={uid}:{gid}", str(root), *COMMAND],
            ENV,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
            ],
            setsid=True,
        )
    pid_file(root).write_text(f"{pid}\n")
    return pid


def stop(root: Path) -> None:
    pid = running_pid(root)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while alive(pid, root) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not alive(pid, root):
                break
        with contextlib.suppress(ChildProcessError):  # reap it when this process started it
            os.waitpid(pid, os.WNOHANG)
    pid_file(root).unlink(missing_ok=True)


def restart(root: Path) -> int:
    stop(root)
    return start(root)


def transport(root: Path, command: list[str]) -> int:
    try:
        done = subprocess.run(["chroot", str(root), *command], env=ENV, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"chroot_agent.py: {command[0]} took over {INSTALL_TIMEOUT:g}s", file=sys.stderr)
        return 124
    if done.returncode == 0:
        restart(root)
    return done.returncode


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: chroot_agent.py ROOT COMMAND...")
    sys.exit(transport(Path(sys.argv[1]).resolve(), sys.argv[2:]))
