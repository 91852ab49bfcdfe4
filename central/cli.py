"""`edgeward-central`: the central service."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from edgeward import __version__

from .config import load_config
from .errors import CentralError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward-central")
def main() -> None:
    """The edgeward central service.

    Accepts node streams over mutual TLS (the node id is the certificate SAN),
    ingests usage deltas exactly once, aggregates usage, decides quota and
    expiry suspensions and pushes them to nodes.
    """


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("/etc/edgeward/central.toml"),
    show_default=True,
    help="TOML configuration file.",
)
@click.option("--log-level", default="info", show_default=True)
def run(config_path: Path, log_level: str) -> None:
    """Serve node streams until SIGTERM/SIGINT (systemd Type=notify aware)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(config_path)
    except CentralError as e:
        raise click.ClickException(str(e)) from None
    from edgeward.pki.errors import PkiError

    from .server import serve

    async def run_until_signalled() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
        await serve(config, shutdown=shutdown)

    try:
        asyncio.run(run_until_signalled())
    except (CentralError, PkiError, OSError) as e:
        raise click.ClickException(str(e)) from None
