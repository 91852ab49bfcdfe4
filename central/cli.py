"""`edgeward-central`: the central service."""

from __future__ import annotations

import click

from edgeward import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward-central")
def main() -> None:
    """The edgeward central service.

    Accepts node streams over mutual TLS (the node id is the certificate SAN),
    ingests usage deltas exactly once, aggregates usage, decides quota and
    expiry suspensions and pushes them to nodes.
    """
