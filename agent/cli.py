"""`edgeward-agent`: the node daemon and its local commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeward import __version__

from .config import ConfigError, example, load

DEFAULT_CONFIG = Path("/etc/edgeward/agent.toml")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent's TOML configuration file.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward-agent")
def main() -> None:
    """The edgeward node agent.

    Applies the node's users to the proxy core (Xray-core / v2ray gRPC API) and
    to WireGuard without restarting either, journals traffic deltas in a local
    SQLite file and streams them to central over mutual TLS. Keeps serving and
    enforcing expiry and quota leases while central is unreachable.
    """


def _load(config_path: Path):
    try:
        return load(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Run the daemon until SIGTERM (systemd Type=notify; SIGHUP reloads the config)."""
    import trio

    from .daemon import run_daemon
    from .journal import JournalError

    _load(config_path)  # a bad config is a clear error before anything starts
    startup_errors = (JournalError, ConfigError, OSError)
    try:
        trio.run(run_daemon, config_path)
    except startup_errors as e:
        raise click.ClickException(str(e)) from None
    except BaseExceptionGroup as group:
        # Raised inside the daemon's nurseries: report the one that matters.
        matched, _ = group.split(startup_errors)
        if matched is None:
            raise
        while isinstance(matched, BaseExceptionGroup):
            matched = matched.exceptions[0]
        raise click.ClickException(str(matched)) from None
    except KeyboardInterrupt:
        sys.exit(130)


@main.command("config-example")
def config_example() -> None:
    """Print the documented default configuration (every setting at its default)."""
    click.echo(example(), nl=False)


def _ask(config_path: Path, request: dict[str, Any]) -> dict[str, Any]:
    from .control import ControlError, ask

    config = _load(config_path)
    try:
        answer = ask(config.control_socket, request)
    except ControlError as e:
        raise click.ClickException(str(e)) from None
    if not answer.get("ok"):
        raise click.ClickException(str(answer.get("error", "the daemon refused the request")))
    return answer


def _ms(value: int | None) -> str:
    if not value:
        return "never"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, as_json: bool) -> None:
    """The running daemon's state: core epoch, users, outbox, central connection."""
    s = _ask(config_path, {"command": "status"})["status"]
    if as_json:
        click.echo(json.dumps(s, indent=2, sort_keys=True))
        return
    lines = [
        f"node:        {s['node_id']} (desired revision {s['revision']})",
        f"core:        {'reachable' if s['core_reachable'] else 'UNREACHABLE'}, "
        f"epoch {s['epoch'] or '-'}",
        f"users:       {s['users_desired']} desired, {s['users_served']} served, "
        f"{s['users_applied']} applied to the core",
        f"outbox:      {s['outbox_depth']} deltas ({s['outbox_bytes']} bytes), "
        f"head seq {s['journal_head_seq']}, acked {s['journal_acked_seq']}",
        f"central:     {s['connection']}, last ack {_ms(s['last_ack_at_ms'])}",
    ]
    if s.get("last_error"):
        lines.append(f"last error:  {s['last_error']}")
    click.echo("\n".join(lines))


@main.command()
@config_option
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain(config_path: Path, user: str, as_json: bool) -> None:
    """Why USER is (or is not) served here: desired vs applied, usage, enforcement."""
    e = _ask(config_path, {"command": "explain", "user": user})["explain"]
    if as_json:
        click.echo(json.dumps(e, indent=2, sort_keys=True))
        return
    lines = [f"user {e['user_id']}: {'SERVED' if e['served'] else 'NOT SERVED'} ({e['reason']})"]
    desired = e["desired"]
    if desired:
        lines.append(f"  desired (rev {e['revision']}): proxy {', '.join(desired['proxy']) or '-'}")
        if desired["wireguard"]:
            lines.append(f"                     wireguard {', '.join(desired['wireguard'])}")
        if desired["expires_at_ms"]:
            lines.append(f"  expires:  {_ms(desired['expires_at_ms'])}")
    for engine, held in sorted(e["applied"].items()):
        lines.append(f"  applied ({engine}): {', '.join(held) if held else 'nothing'}")
    if e["enforcement"]:
        en = e["enforcement"]
        lines.append(
            f"  enforcement: {'suspended' if en['suspended'] else 'resumed'} "
            f"({en['reason']}) at {_ms(en['decided_at_ms'])}"
        )
    if e["lease"]:
        le = e["lease"]
        lines.append(
            f"  lease {le['lease_id']}: {le['used']} of {le['granted']} bytes used, "
            f"{le['remaining']} left"
        )
    lines.append(f"  last usage: {_ms(e['last_usage_at_ms'])}")
    click.echo("\n".join(lines))


@main.command()
@click.option("--central", "central", required=True, help="central's HOST:PORT.")
@click.option("--token", required=True, help="The single-use enrollment token.")
@click.option("--node-id", required=True, help="This node's id (as the token was minted for).")
@click.option(
    "--ca-file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The edgeward CA certificate (PEM) to verify central with.",
)
@config_option
@click.option("--server-name", default="", help="Name in central's certificate (default: host).")
def enroll(
    central: str, token: str, node_id: str, ca_file: Path, config_path: Path, server_name: str
) -> None:
    """Enroll this node: a key made here, signed by central; writes cert, key and config."""
    from .enroll import EnrollError, enroll_node

    try:
        written = enroll_node(
            central=central,
            token=token,
            node_id=node_id,
            ca_file=ca_file,
            config_path=config_path,
            server_name=server_name,
        )
    except EnrollError as e:
        raise click.ClickException(str(e)) from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"node {node_id} enrolled; start it with: edgeward-agent run --config {config_path}")
