"""`edgeward pki ...`: thin commands over the pki library."""

from __future__ import annotations

import click


@click.group()
def pki() -> None:
    """Certificate authority: init, enrollment tokens, certificates, revocation."""
