"""`edgeward-agent`: the node daemon and its local commands."""

from __future__ import annotations

import click

from edgeward import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward-agent")
def main() -> None:
    """The edgeward node agent.

    Applies the node's users to the proxy core (Xray-core / v2ray gRPC API) and
    to WireGuard without restarting either, journals traffic deltas in a local
    SQLite file and streams them to central over mutual TLS. Keeps serving and
    enforcing expiry and quota leases while central is unreachable.
    """
