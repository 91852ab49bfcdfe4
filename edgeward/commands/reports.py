"""`edgeward usage`, `edgeward explain USER`, `edgeward status`, `edgeward completion`."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from edgeward.proto import v1

from .common import emit_json, human_bytes, json_option, parse_time, plain, rpc, table, when


@click.command()
@click.option("--user", default="", help="Only this user.")
@click.option("--node", default="", help="Only this node.")
@click.option("--since", help="From (2026-01-01, ISO time); hours are whole.")
@click.option("--until", help="Up to, excluded.")
@click.option("--by", "group_by", type=click.Choice(["user", "node", "hour", "day"]),
              default="user", help="One row per user (default), node, hour or day.")  # fmt: skip
@json_option
@click.pass_context
def usage(ctx, user, node, since, until, group_by, as_json) -> None:
    """Traffic per user, node, hour or day over a period."""
    request = v1.UsageRequest(
        user_id=user, node_id=node, group_by=group_by,
        since_ms=parse_time(since) if since else 0, until_ms=parse_time(until) if until else 0,
    )  # fmt: skip
    response = rpc(ctx, lambda stub: stub.get_usage(request))
    if as_json:
        emit_json(plain(response))
        return
    key = {
        "user": lambda r: r.user_id,
        "node": lambda r: r.node_id,
        "hour": lambda r: when(r.period_start_ms),
        "day": lambda r: when(r.period_start_ms)[:10],
    }
    rows = [(key[group_by](r), human_bytes(r.uplink_bytes), human_bytes(r.downlink_bytes),
             human_bytes(r.uplink_bytes + r.downlink_bytes)) for r in response.rows]  # fmt: skip
    total = response.uplink_bytes + response.downlink_bytes
    rows.append(("total", human_bytes(response.uplink_bytes),
                 human_bytes(response.downlink_bytes), human_bytes(total)))  # fmt: skip
    table([group_by, "up", "down", "total"], rows)


@click.command()
@click.argument("user_id")
@json_option
@click.pass_context
def explain(ctx, user_id, as_json) -> None:
    """Why USER_ID is or is not served: limits, usage, and desired vs applied per node."""
    report = rpc(ctx, lambda stub: stub.explain(v1.UserRef(user_id=user_id)))
    if as_json:
        emit_json(plain(report))
        return
    user = report.user
    click.echo(report.summary)
    for reason in report.reasons:
        click.echo(f"  - {reason}")
    used = human_bytes(user.quota_used_bytes)
    click.echo(
        f"limit {human_bytes(user.data_limit_bytes)}, used {used},"
        f" expires {when(user.expires_at_ms)}"
    )
    if report.nodes:
        table(
            ["node", "state", "user rev", "applied", "lease", "traffic", "detail"],
            [(n.node_id, n.state, n.user_revision, n.applied_revision,
              "-" if n.lease_bytes is None else human_bytes(n.lease_bytes),
              human_bytes(n.uplink_bytes + n.downlink_bytes), n.detail) for n in report.nodes],
        )  # fmt: skip
    for line in report.recent_actions:
        click.echo(f"  {line}")


@click.command()
@json_option
@click.pass_context
def status(ctx, as_json) -> None:
    """central's version, node and user counts, and who you are to it."""
    response = rpc(ctx, lambda stub: stub.get_status(v1.GetStatusRequest()))
    if as_json:
        emit_json(plain(response))
        return
    click.echo(f"central {response.central_version}: {response.nodes_connected}/"
               f"{response.nodes_total} nodes connected, {response.users_total} users")  # fmt: skip
    click.echo(f"you are {response.caller} ({response.caller_role})")


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx, shell) -> None:
    """Print the shell completion script, e.g. `eval "$(edgeward completion bash)"`."""
    cls = get_completion_class(shell)
    assert cls is not None
    # The installed program's name, whatever this process was started as.
    click.echo(cls(ctx.find_root().command, {}, "edgeward", "_EDGEWARD_COMPLETE").source())
