"""A private PostgreSQL cluster for tests (Debian package `postgresql`).

`PostgresCluster` runs initdb into a temporary directory and starts the server
on 127.0.0.1 with a free port (its unix socket in the same directory), so it
shares nothing with a system PostgreSQL; `stop()` shuts it down (fast mode,
then SIGKILL) and removes the directory. initdb refuses to run as root: as
root the cluster runs as the `postgres` system user the Debian package made.
Each test gets its own database from `new_database()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_port

START_SECONDS = 30


def postgres_bindir() -> Path | None:
    """The newest installed server's bin dir (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeward-pg-"))
        self.datadir = self.workdir / "data"
        self.port = free_port()
        self.user = "edgeward"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=START_SECONDS
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        if self._as:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
            "--auth=trust", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.workdir} -c fsync=on -c max_connections=50"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
            str(self.workdir / "server.log"), "-o", options, "-w", "-t", str(START_SECONDS),
            "start",
        )  # fmt: skip

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        self._databases += 1
        name = f"test_{self._databases}"
        self._run(
            str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
            self.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
            f"CREATE DATABASE {name}",
        )  # fmt: skip
        return self.dsn(name)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        try:
            if self._pid() is not None:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run(
                        str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                        "-w", "-t", "20", "stop",
                    )  # fmt: skip
                pid = self._pid()
                if pid is not None:  # still there: do not leave a server behind
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
