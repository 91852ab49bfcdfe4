"""`python -m edgeward.devfleet up|down|status` (what scripts/fleet runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import demo
from .fleet import Fleet
from .layout import make_layout

DEFAULT_DIR = Path(".fleet")


def _fleet(directory: Path, name: str, subnet: int) -> Fleet:
    return Fleet(make_layout(directory, name=name, subnet=subnet), say=click.echo)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="Fleet state (CA, databases, logs, pid files).",
)
@click.option("--name", default="ewf", show_default=True, help="Prefix of namespaces/links.")
@click.option("--subnet", type=int, default=77, show_default=True, help="Uses 10.SUBNET.0.0/24.")
@click.pass_context
def main(ctx: click.Context, directory: Path, name: str, subnet: int) -> None:
    """A local edgeward fleet: central plus two nodes in network namespaces."""
    try:
        ctx.obj = _fleet(directory, name, subnet)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _interrupted(*_args: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option(
    "--demo/--no-demo",
    "with_demo",
    default=True,
    show_default=True,
    help="Users, real traffic, a live view and a quota suspension.",
)
@click.option(
    "--duration",
    type=float,
    default=60.0,
    show_default=True,
    help="Longest time the live view runs (seconds).",
)
@click.pass_obj
def up(fleet: Fleet, with_demo: bool, duration: float) -> None:
    """Start the fleet (idempotent) and, by default, show it working. Ctrl-C takes it down."""
    try:
        fleet.up(agents=False)
        if with_demo:
            demo.seed(fleet)  # before the agents connect: see admin.py
        fleet.start_agents()
        if with_demo:
            result = demo.run_demo(fleet, click.echo, duration)
            if result.suspended is None:
                click.echo("no quota suspension happened within the live view's time")
    except KeyboardInterrupt:
        click.echo("\ninterrupted: taking the fleet down")
        fleet.down()
        sys.exit(130)
    except Exception as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo(f"logs: {fleet.layout.run_dir}/*.log; taking the fleet down", err=True)
        fleet.down()
        sys.exit(1)
    for line in instructions(fleet):
        click.echo(line)


def instructions(fleet: Fleet) -> list[str]:
    layout = fleet.layout
    node = layout.nodes[0]
    admin = f".venv/bin/edgeward --config {layout.dir / 'admin.toml'}"
    return [
        "",
        f"The fleet keeps running (state in {layout.dir}). Look at it with:",
        f"  {admin} users list",
        f"  {admin} usage --by node",
        f"  {admin} explain carol",
        f"  {admin} nodes list",
        f"  .venv/bin/edgeward-agent status --config {node.agent_config}",
        f"  ip netns exec {node.ns} wg show {node.wg_iface}",
        f"  .venv/bin/edgeward pki --ca-dir {layout.pki_dir} show",
        f"  scripts/fleet status      (logs: {layout.run_dir}/*.log)",
        "Stop it and remove its namespaces and links: scripts/fleet down",
    ]


@main.command()
@click.pass_obj
def down(fleet: Fleet) -> None:
    """Stop every fleet process and remove its namespaces and links (idempotent)."""
    left = fleet.down()
    if left:
        raise click.ClickException(f"could not remove: {', '.join(left)}")
    click.echo("fleet is down")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(fleet: Fleet, as_json: bool) -> None:
    """What runs and what exists."""
    info = fleet.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for name, alive in info["processes"].items():
        click.echo(f"  {name:<28} {'running' if alive else 'stopped'}")
    click.echo(f"  network: {', '.join(info['network']) or 'none'}")
