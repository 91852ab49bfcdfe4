"""central in a child process for crash tests: `python -m tests.central.central_child
CONFIG [--die-after-commit]` prints its port, serves until SIGTERM (from SQLite or
PostgreSQL, as the config says). With --die-after-commit it SIGKILLs itself right
after the first ingest commits, before the Ack is sent (the window exactly-once
must survive)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from edgeward.central.config import load_config
from edgeward.central.pg_storage import PgStorage
from edgeward.central.server import serve
from edgeward.central.storage import SqliteStorage


def die_after_commit() -> None:
    for storage_class in (SqliteStorage, PgStorage):
        committed_ingest = storage_class.ingest_many  # what the node stream calls

        async def ingest_then_die(self, *args, committed_ingest=committed_ingest, **kwargs):
            await committed_ingest(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        storage_class.ingest_many = ingest_then_die


async def main(config_path: Path) -> None:
    shutdown = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, shutdown.set)

    def ready(port: int) -> None:
        print(port, flush=True)

    await serve(load_config(config_path), shutdown=shutdown, ready=ready)


if __name__ == "__main__":
    if "--die-after-commit" in sys.argv:
        die_after_commit()
    asyncio.run(main(Path(sys.argv[1])))
