"""`edgeward plans ...`: data limit, duration and engines users get by default."""

from __future__ import annotations

import click

from edgeward.proto import v1

from .common import (
    confirm_or_abort,
    emit_json,
    human_bytes,
    json_option,
    parse_size,
    plain,
    rpc,
    table,
)

ENGINES = {"proxy": v1.Engine.PROXY, "wireguard": v1.Engine.WIREGUARD}


def engines_text(plan: v1.PlanInfo) -> str:
    return ",".join(v1.Engine(e).name.lower() for e in plan.engines) or "all"


def show_plan(plan: v1.PlanInfo, as_json: bool) -> None:
    if as_json:
        emit_json(plain(plan))
        return
    click.echo(f"plan:      {plan.plan_id}")
    click.echo(f"limit:     {human_bytes(plan.data_limit_bytes)}")
    duration = f"{plan.duration_days} days" if plan.duration_days else "never expires"
    click.echo(f"duration:  {duration}")
    click.echo(f"engines:   {engines_text(plan)}")
    click.echo(f"users:     {plan.users}")


@click.group()
def plans() -> None:
    """Plans: the data limit, duration and engines new users get."""


@plans.command("add")
@click.argument("plan_id")
@click.option("--data-limit", help="Data limit per period (e.g. 100G); default unlimited.")
@click.option("--duration", "duration_days", type=int, help="Days per period; default forever.")
@click.option("--engine", "engines", multiple=True, type=click.Choice(sorted(ENGINES)),
              help="Engine the plan includes (repeatable; default all).")  # fmt: skip
@json_option
@click.pass_context
def add(ctx, plan_id, data_limit, duration_days, engines, as_json) -> None:
    """Create PLAN_ID."""
    request = v1.PlanInfo(
        plan_id=plan_id,
        data_limit_bytes=parse_size(data_limit, "data limit") if data_limit else None,
        duration_days=duration_days,
        engines=[ENGINES[e] for e in engines],
    )
    show_plan(rpc(ctx, lambda stub: stub.add_plan(request)), as_json)


@plans.command("list")
@json_option
@click.pass_context
def list_(ctx, as_json) -> None:
    """List plans."""
    response = rpc(ctx, lambda stub: stub.list_plans(v1.ListPlansRequest()))
    if as_json:
        emit_json([plain(p) for p in response.plans])
        return
    table(
        ["plan", "limit", "days", "engines", "users"],
        [(p.plan_id, human_bytes(p.data_limit_bytes), p.duration_days or "-", engines_text(p),
          p.users) for p in response.plans],
    )  # fmt: skip


@plans.command("show")
@click.argument("plan_id")
@json_option
@click.pass_context
def show(ctx, plan_id, as_json) -> None:
    """Show one plan."""
    show_plan(rpc(ctx, lambda stub: stub.get_plan(v1.PlanRef(plan_id=plan_id))), as_json)


@plans.command("delete")
@click.argument("plan_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def delete(ctx, plan_id, yes, as_json) -> None:
    """Delete PLAN_ID (refused while users are on it)."""
    confirm_or_abort(yes, f"Delete plan {plan_id}?")
    plan = rpc(ctx, lambda stub: stub.delete_plan(v1.PlanRef(plan_id=plan_id)))
    if as_json:
        emit_json(plain(plan))
    else:
        click.echo(f"deleted plan {plan.plan_id}")
