"""The fleet's processes: started detached, found again through pid files.

`up` returns while central, cores, agents and wireguard-go keep running, so a
later `down` (another process) must find them: each one has
run/NAME.pid holding "PID STARTTIME" (the kernel's start time of that PID), and
a pid is only signalled while its start time still matches: a recycled PID is
never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STOP_WAIT = 10.0


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing paren.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class Handle:
    name: str
    pid: int
    started: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.started and not is_zombie(self.pid)


class Processes:
    """Pid files under run_dir; logs next to them (NAME.log)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        # Children started by this process: reaped on stop so they do not linger as zombies.
        self._children: dict[int, subprocess.Popen] = {}

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def start(
        self, name: str, argv: list[str], *, netns: str | None = None, env: dict | None = None
    ) -> Handle:
        """Start argv detached (own session), in namespace netns if given."""
        existing = self.get(name)
        if existing is not None and existing.alive():
            raise RuntimeError(f"{name} is already running (pid {existing.pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if netns is not None:
            # `ip netns exec` execs the program: the PID we keep is the program's own.
            argv = ["ip", "netns", "exec", netns, *argv]
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self._children[proc.pid] = proc
        started = start_time(proc.pid)
        handle = Handle(name, proc.pid, started if started is not None else -1)
        self._pid_path(name).write_text(f"{handle.pid} {handle.started}\n")
        return handle

    def get(self, name: str) -> Handle | None:
        try:
            pid_text, started_text = self._pid_path(name).read_text().split()
        except (OSError, ValueError):
            return None
        return Handle(name, int(pid_text), int(started_text))

    def names(self) -> list[str]:
        if not self.run_dir.is_dir():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def alive(self, name: str) -> bool:
        handle = self.get(name)
        return handle is not None and handle.alive()

    def signal(self, name: str, sig: int) -> bool:
        """Send sig if the recorded process is still the one we started."""
        handle = self.get(name)
        if handle is None or not handle.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, sig)
        return True

    def wait_gone(self, name: str, timeout: float = STOP_WAIT) -> bool:
        handle = self.get(name)
        if handle is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self._children.get(handle.pid)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=0.05)
            if not handle.alive():
                child = self._children.pop(handle.pid, None)
                if child is not None:
                    child.wait(timeout=timeout)  # a zombie by now: reap it
                return True
            time.sleep(0.02)
        return False

    def kill(self, name: str) -> None:
        """SIGKILL and wait until it is gone; the pid file stays (the process may be
        started again under the same name)."""
        if self.signal(name, signal.SIGKILL) and not self.wait_gone(name):
            raise RuntimeError(f"{name} did not die after SIGKILL")

    def stop(self, name: str, timeout: float = STOP_WAIT) -> None:
        """SIGTERM, then SIGKILL after timeout; removes the pid file."""
        if self.signal(name, signal.SIGTERM) and not self.wait_gone(name, timeout):
            self.kill(name)
        self._pid_path(name).unlink(missing_ok=True)

    def exit_code(self, name: str) -> int | None:
        """The exit status of a child this process started and that has ended."""
        handle = self.get(name)
        child = self._children.get(handle.pid) if handle else None
        return None if child is None else child.poll()

    def tail(self, name: str, chars: int = 800) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""
