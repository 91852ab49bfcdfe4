"""`edgeward`: the operator's command line (admin side)."""

from __future__ import annotations

import click

from edgeward import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward")
def main() -> None:
    """Operate an edgeward fleet: certificates, users, plans, nodes and usage.

    Each group acts on one noun; read commands take --json.
    """


def _register() -> None:
    # Command groups live with the part they operate on.
    from edgeward.pki.cli import pki

    main.add_command(pki)


_register()
