"""edgeward-agent as a real child process (`edgeward-agent run --config`), for crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edgeward.agent.config import AgentConfig, to_toml

WAIT = 20.0
RUN = "from edgeward.agent.cli import main; main()"


class AgentProcess:
    def __init__(self, config: AgentConfig, workdir: Path, *, crash_at: str | None = None):
        self.config_path = workdir / "agent.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / "agent.log"
        env = dict(os.environ)
        env.pop("EDGEWARD_AGENT_CRASH", None)
        if crash_at:
            env["EDGEWARD_AGENT_CRASH"] = crash_at
        with open(self.log_path, "ab") as log:
            log.write(f"---- start (crash at {crash_at})\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUN, "run", "--config", str(self.config_path)],
                env=env,
                stdout=log,
                stderr=log,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
