"""`edgeward users ...`: create, list, show, renew, top up, suspend, reissue, delete, import."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgeward.admin_client import EXIT_INPUT, CommandError
from edgeward.proto import v1

from .common import (
    confirm_or_abort,
    emit_json,
    human_bytes,
    json_option,
    parse_size,
    parse_time,
    plain,
    rpc,
    table,
    when,
)

IMPORT_BATCH = 500


def user_state(user: v1.UserInfo) -> str:
    if user.admin_suspended:
        return "suspended (admin)"
    if user.enforced_reason != v1.Reason.UNSPECIFIED:
        return f"suspended ({v1.Reason(user.enforced_reason).name.lower()})"
    return "active"


def show_user(user: v1.UserInfo, as_json: bool) -> None:
    if as_json:
        emit_json(plain(user))
        return
    click.echo(f"user:      {user.user_id}")
    click.echo(f"state:     {user_state(user)}")
    click.echo(f"plan:      {user.plan_id or '-'}")
    click.echo(f"limit:     {human_bytes(user.data_limit_bytes)}")
    click.echo(f"used:      {human_bytes(user.quota_used_bytes)} (counted against the limit)")
    click.echo(f"traffic:   up {human_bytes(user.uplink_bytes)}, down "
               f"{human_bytes(user.downlink_bytes)}")  # fmt: skip
    click.echo(f"expires:   {when(user.expires_at_ms)}")
    click.echo(f"nodes:     {', '.join(user.node_ids) or '-'}")
    if user.uuid:
        click.echo(f"uuid:      {user.uuid}")


@click.group()
def users() -> None:
    """Users: their limits, expiry, nodes and credentials."""


@users.command("add")
@click.argument("user_id")
@click.option("--plan", default="", help="Plan giving the data limit and duration.")
@click.option("--data-limit", help="Data limit (e.g. 50G, 500MiB); overrides the plan's.")
@click.option("--expires", help="Expiry: 2026-12-31, ISO time, or +30d; overrides the plan's.")
@click.option("--node", "nodes", multiple=True, help="Node to serve the user (repeatable).")
@click.option("--uuid", default="", help="Keep this UUID (default: a new one).")
@click.option("--why", default="", help="Reason, for the audit log.")
@json_option
@click.pass_context
def add(ctx, user_id, plan, data_limit, expires, nodes, uuid, why, as_json) -> None:
    """Create USER_ID with fresh credentials."""
    request = v1.AddUserRequest(
        user_id=user_id,
        plan_id=plan,
        data_limit_bytes=parse_size(data_limit, "data limit") if data_limit else None,
        expires_at_ms=parse_time(expires) if expires else None,
        node_ids=list(nodes),
        uuid=uuid,
        why=why,
    )
    show_user(rpc(ctx, lambda stub: stub.add_user(request)), as_json)


STATES = {
    "active": lambda u: not u.admin_suspended and u.enforced_reason == v1.Reason.UNSPECIFIED,
    "suspended": lambda u: u.admin_suspended or u.enforced_reason != v1.Reason.UNSPECIFIED,
    "admin": lambda u: u.admin_suspended,
    "quota": lambda u: u.enforced_reason == v1.Reason.QUOTA,
    "expired": lambda u: u.enforced_reason == v1.Reason.EXPIRED,
}


@users.command("list")
@click.option("--node", default="", help="Only users assigned to this node.")
@click.option("--plan", default="", help="Only users on this plan.")
@click.option("--state", type=click.Choice(sorted(STATES)), help="Only users in this state.")
@json_option
@click.pass_context
def list_(ctx, node, plan, state, as_json) -> None:
    """List users."""
    request = v1.ListUsersRequest(node_id=node, plan_id=plan)
    response = rpc(ctx, lambda stub: stub.list_users(request))
    if state:
        response.users = [u for u in response.users if STATES[state](u)]
    if as_json:
        emit_json([plain(u) for u in response.users])
        return
    table(
        ["user", "state", "plan", "used", "limit", "expires", "nodes"],
        [
            (u.user_id, user_state(u), u.plan_id or "-", human_bytes(u.quota_used_bytes),
             human_bytes(u.data_limit_bytes), when(u.expires_at_ms), ",".join(u.node_ids) or "-")
            for u in response.users
        ],
    )  # fmt: skip


@users.command("show")
@click.argument("user_id")
@json_option
@click.pass_context
def show(ctx, user_id, as_json) -> None:
    """Show one user."""
    show_user(rpc(ctx, lambda stub: stub.get_user(v1.UserRef(user_id=user_id))), as_json)


@users.command("renew")
@click.argument("user_id")
@click.option("--expires", help="New expiry (default: now + the plan's duration).")
@click.option("--reset-usage", is_flag=True, help="Start the data limit from zero again.")
@click.option("--why", default="")
@json_option
@click.pass_context
def renew(ctx, user_id, expires, reset_usage, why, as_json) -> None:
    """Start a new period for USER_ID (resumes it if nothing else holds)."""
    request = v1.RenewUserRequest(
        user_id=user_id,
        expires_at_ms=parse_time(expires) if expires else None,
        reset_usage=reset_usage,
        why=why,
    )
    show_user(rpc(ctx, lambda stub: stub.renew_user(request)), as_json)


@users.command("topup")
@click.argument("user_id")
@click.argument("amount")
@click.option("--why", default="")
@json_option
@click.pass_context
def topup(ctx, user_id, amount, why, as_json) -> None:
    """Raise USER_ID's data limit by AMOUNT (e.g. 10G)."""
    request = v1.TopUpUserRequest(
        user_id=user_id, extra_bytes=parse_size(amount, "top-up"), why=why
    )
    show_user(rpc(ctx, lambda stub: stub.top_up_user(request)), as_json)


@users.command("suspend")
@click.argument("user_id")
@click.option("--why", required=True, help="Reason (kept in the audit log).")
@json_option
@click.pass_context
def suspend(ctx, user_id, why, as_json) -> None:
    """Suspend USER_ID on every node until resumed."""
    request = v1.SuspendUserRequest(user_id=user_id, suspended=True, why=why)
    show_user(rpc(ctx, lambda stub: stub.suspend_user(request)), as_json)


@users.command("resume")
@click.argument("user_id")
@click.option("--why", default="resumed by operator")
@json_option
@click.pass_context
def resume(ctx, user_id, why, as_json) -> None:
    """Lift an admin suspension of USER_ID (quota/expiry suspensions stay)."""
    request = v1.SuspendUserRequest(user_id=user_id, suspended=False, why=why)
    show_user(rpc(ctx, lambda stub: stub.suspend_user(request)), as_json)


@users.command("reissue")
@click.argument("user_id")
@click.option("--why", default="")
@json_option
@click.pass_context
def reissue(ctx, user_id, why, as_json) -> None:
    """New credentials for USER_ID; the old ones stop working on every node."""
    request = v1.UserRef(user_id=user_id, why=why)
    show_user(rpc(ctx, lambda stub: stub.reissue_user(request)), as_json)


@users.command("delete")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--why", default="")
@json_option
@click.pass_context
def delete(ctx, user_id, yes, why, as_json) -> None:
    """Delete USER_ID: every node drops it (its usage history stays)."""
    confirm_or_abort(yes, f"Delete user {user_id} from central and every node?")
    user = rpc(ctx, lambda stub: stub.delete_user(v1.UserRef(user_id=user_id, why=why)))
    if as_json:
        emit_json(plain(user))
    else:
        click.echo(f"deleted {user.user_id} (was on: {', '.join(user.node_ids) or 'no node'})")


@users.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["auto", "csv", "marzban"]), default="auto",
    help="auto: a SQLite file is Marzban's database, anything else CSV.",
)  # fmt: skip
@click.option("--node", "nodes", multiple=True, help="Assign every user to this node.")
@click.option("--plan", default="", help="Plan for users the file gives none.")
@click.option("--dry-run", is_flag=True, help="Check everything, import nothing.")
@json_option
@click.pass_context
def import_(ctx, path, fmt, nodes, plan, dry_run, as_json) -> None:
    """Import users from a CSV file or a Marzban SQLite database (UUIDs, passwords,
    limits, expiry and used traffic kept). The whole file is checked first; nothing
    is imported when any row is wrong."""
    from edgeward import importers

    try:
        rows = importers.read_users(path, fmt)
    except importers.ImportFileError as e:
        raise CommandError(str(e), EXIT_INPUT) from None
    if plan:
        rows = [r if r.plan_id else _with_plan(r, plan) for r in rows]
    source = f"{fmt if fmt != 'auto' else importers.detect(path)}:{path.name}"

    def request(batch: list[v1.ImportedUser], validate: bool) -> v1.ImportUsersRequest:
        return v1.ImportUsersRequest(
            users=batch, node_ids=list(nodes), validate_only=validate, source=source
        )

    # One check of the whole set (nothing written on any error), then batches.
    rpc(ctx, lambda stub: stub.import_users(request(rows, True)))
    imported = 0
    if not dry_run:
        batches = [rows[i : i + IMPORT_BATCH] for i in range(0, len(rows), IMPORT_BATCH)]

        async def send_all(stub: v1.AdminServiceStub) -> int:
            done = 0
            with click.progressbar(length=len(rows), label="importing", file=sys.stderr) as bar:
                for batch in batches:
                    done += (await stub.import_users(request(batch, False))).imported
                    bar.update(len(batch))
            return done

        imported = rpc(ctx, send_all)
    result = {"read": len(rows), "imported": imported, "dry_run": dry_run, "source": source}
    if as_json:
        emit_json(result)
    elif dry_run:
        click.echo(f"{len(rows)} user(s) checked, ready to import (dry run: nothing written)")
    else:
        click.echo(f"imported {imported} user(s) from {path}")


def _with_plan(row: v1.ImportedUser, plan: str) -> v1.ImportedUser:
    row.plan_id = plan
    return row
