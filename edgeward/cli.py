"""`edgeward`: the operator's command line (admin side).

Connection settings (options, EDGEWARD_* variables, ~/.config/edgeward/admin.toml)
and exit codes are documented in edgeward/admin_client.py and `edgeward --help`.
"""

from __future__ import annotations

import click

from edgeward import __version__

HELP = """Operate an edgeward fleet: certificates, users, plans, nodes and usage.

Each group acts on one noun; read commands take --json. Connection to central
(mTLS with an admin certificate): --central HOST:PORT --cert --key --ca, or
EDGEWARD_CENTRAL / EDGEWARD_CERT / EDGEWARD_KEY / EDGEWARD_CA, or the same keys
(central, cert, key, ca, server_name) in ~/.config/edgeward/admin.toml.

Exit codes: 0 ok, 2 bad input, 3 not found, 4 conflict, 5 refused (role or
certificate), 6 central unreachable or not configured, 7 node unhealthy
(nodes health --check), 1 anything else. Shell completion: edgeward completion bash.
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward")
@click.option("--central", help="central's admin address, HOST:PORT.")
@click.option("--cert", help="Admin certificate (PEM).")
@click.option("--key", help="Admin private key (PEM).")
@click.option("--ca", help="The fleet CA certificate (PEM).")
@click.option("--server-name", help="TLS name of central's certificate (default: the host).")
@click.option("--config", help="Settings file (default ~/.config/edgeward/admin.toml).")
@click.pass_context
def main(ctx: click.Context, **options: str | None) -> None:
    ctx.obj = {k: v for k, v in options.items() if v}


def _register() -> None:
    # Command groups live with the part they operate on.
    from edgeward.commands import configs, nodes, plans, reports, users
    from edgeward.pki.cli import pki

    main.add_command(pki)
    configs.register(users.users)
    for command in (users.users, plans.plans, nodes.nodes, reports.usage, reports.explain,
                    reports.status, reports.completion):  # fmt: skip
        main.add_command(command)
    # `edgeward node health NODE --json`, as the staged rollout documents it.
    main.add_command(click.Group("node", commands=nodes.nodes.commands, hidden=True))


_register()
