"""`edgeward nodes ...`: registration, connection state, assignments, revocation."""

from __future__ import annotations

import click

from edgeward.admin_client import CommandError
from edgeward.proto import v1

from .common import confirm_or_abort, emit_json, human_bytes, json_option, plain, rpc, table, when

PROTOCOLS = {
    "vless": v1.Protocol.VLESS,
    "vmess": v1.Protocol.VMESS,
    "trojan": v1.Protocol.TROJAN,
    "shadowsocks": v1.Protocol.SHADOWSOCKS,
    "shadowsocks-2022": v1.Protocol.SHADOWSOCKS_2022,
}
TEXT_KEYS = ("flow", "cipher", "network", "security", "sni", "path", "host", "public_key",
             "short_id", "fingerprint", "dns")  # fmt: skip
# `nodes health --check` exits with this when the node is not healthy (JSON still printed).
EXIT_UNHEALTHY = 7


def parse_inbound(spec: str) -> v1.InboundInfo:
    """'tag=vless-in,protocol=vless,port=443,security=tls,sni=example.com' or
    'tag=wg0,protocol=wireguard,port=51820,public_key=...,allowed_ips=0.0.0.0/0+::/0'."""
    values: dict[str, str] = {}
    for part in filter(None, spec.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise click.BadParameter(f"{part!r} is not key=value (in {spec!r})")
        values[key.strip().replace("-", "_")] = value.strip()
    protocol = values.pop("protocol", "")
    tag = values.pop("tag", "")
    if not tag:
        raise click.BadParameter(f"inbound {spec!r} needs tag=")
    info = v1.InboundInfo(tag=tag)
    if protocol == "wireguard":
        info.engine = v1.Engine.WIREGUARD
    elif protocol in PROTOCOLS:
        info.engine, info.protocol = v1.Engine.PROXY, PROTOCOLS[protocol]
    else:
        choices = ", ".join([*PROTOCOLS, "wireguard"])
        raise click.BadParameter(f"inbound {tag!r}: protocol must be one of {choices}")
    port = values.pop("port", "0")
    if not port.isdigit():
        raise click.BadParameter(f"inbound {tag!r}: port {port!r} is not a number")
    info.port = int(port)
    info.allowed_ips = values.pop("allowed_ips", "").replace("+", ",")
    for key in TEXT_KEYS:
        setattr(info, key, values.pop(key, ""))
    if values:
        raise click.BadParameter(f"inbound {tag!r}: unknown key(s) {', '.join(sorted(values))}")
    return info


def inbound_text(i: v1.InboundInfo) -> str:
    kind = ("wireguard" if i.engine == v1.Engine.WIREGUARD
            else v1.Protocol(i.protocol).name.lower().replace("_", "-"))  # fmt: skip
    port = f":{i.port}" if i.port else ""
    extra = f" {i.network}/{i.security}" if i.network or i.security else ""
    return f"{i.tag} ({kind}{port}{extra})"


def link_state(node: v1.NodeInfo) -> str:
    if node.revoked:
        return "revoked"
    return "connected" if node.link.connected else "offline"


def show_node(node: v1.NodeInfo, as_json: bool) -> None:
    if as_json:
        emit_json(plain(node))
        return
    link = node.link
    click.echo(f"node:       {node.node_id}")
    click.echo(f"state:      {link_state(node)}")
    click.echo(f"address:    {node.public_address or '-'}")
    click.echo(f"version:    {link.software_version or '-'}")
    click.echo(f"last seen:  {when(link.last_seen_ms)}")
    click.echo(f"outbox lag: {link.outbox_lag} delta(s) (head {link.journal_head_seq},"
               f" acked {link.acked_seq})")  # fmt: skip
    click.echo(f"revision:   desired {link.desired_revision}, applied {link.applied_revision}"
               f" ({link.apply_errors} error(s))")  # fmt: skip
    click.echo(f"users:      {node.users_assigned}")
    click.echo(f"traffic:    up {human_bytes(node.uplink_bytes)}, down "
               f"{human_bytes(node.downlink_bytes)}")  # fmt: skip
    for inbound in node.inbounds:
        click.echo(f"inbound:    {inbound_text(inbound)}")


@click.group()
def nodes() -> None:
    """Nodes: registration, connection state, users, revocation."""


@nodes.command("add")
@click.argument("node_id")
@click.option("--address", default="", help="Public host name or IP clients connect to.")
@click.option("--inbound", "inbounds", multiple=True, required=True,
              help="tag=..,protocol=vless|vmess|trojan|shadowsocks|wireguard,port=..[,security=tls"
                   ",sni=..,network=ws,path=..,public_key=..] (repeatable)")  # fmt: skip
@json_option
@click.pass_context
def add(ctx, node_id, address, inbounds, as_json) -> None:
    """Register NODE_ID with what it serves (admin role)."""
    request = v1.AddNodeRequest(
        node_id=node_id, public_address=address, inbounds=[parse_inbound(s) for s in inbounds]
    )
    show_node(rpc(ctx, lambda stub: stub.add_node(request)), as_json)


@nodes.command("list")
@json_option
@click.pass_context
def list_(ctx, as_json) -> None:
    """List nodes with their connection state."""
    response = rpc(ctx, lambda stub: stub.list_nodes(v1.ListNodesRequest()))
    if as_json:
        emit_json([plain(n) for n in response.nodes])
        return
    table(
        ["node", "state", "version", "last seen", "lag", "users", "address"],
        [(n.node_id, link_state(n), n.link.software_version or "-", when(n.link.last_seen_ms),
          n.link.outbox_lag, n.users_assigned, n.public_address or "-") for n in response.nodes],
    )  # fmt: skip


@nodes.command("show")
@click.argument("node_id")
@json_option
@click.pass_context
def show(ctx, node_id, as_json) -> None:
    """Show one node."""
    show_node(rpc(ctx, lambda stub: stub.get_node(v1.NodeRef(node_id=node_id))), as_json)


@nodes.command("health")
@click.argument("node_id")
@click.option(
    "--max-lag",
    type=click.IntRange(min=0),
    default=None,
    help="Unhealthy when more deltas than this wait in the node's outbox.",
)
@click.option("--expect-version", default="", help="Unhealthy unless the node runs this version.")
@click.option("--check", is_flag=True, help="Exit 7 when the node is not healthy.")
@json_option
@click.pass_context
def health(ctx, node_id, max_lag, expect_version, check, as_json) -> None:
    """Is NODE_ID connected, current, its outbox drained? The JSON is what the staged
    rollout reads (connected, version, outbox); it exits 0 whenever central answered,
    so a poller can wait for a reconnecting node (--check: exit 7 if unhealthy)."""
    node = rpc(ctx, lambda stub: stub.get_node(v1.NodeRef(node_id=node_id)))
    link = node.link
    problems = []
    if node.revoked:
        problems.append("revoked")
    if not link.connected:
        problems.append(f"not connected (last seen {when(link.last_seen_ms)})")
    if max_lag is not None and link.outbox_lag > max_lag:
        problems.append(f"outbox lag {link.outbox_lag} > {max_lag}")
    if expect_version and link.software_version != expect_version:
        problems.append(f"runs {link.software_version or 'unknown'}, expected {expect_version}")
    report = {
        "node_id": node.node_id,
        "healthy": not problems,
        "problems": problems,
        "connected": link.connected,
        "version": link.software_version,
        "software_version": link.software_version,
        "last_seen_ms": link.last_seen_ms,
        "outbox": link.outbox_lag,
        "outbox_lag": link.outbox_lag,
        "acked_seq": link.acked_seq,
        "journal_head_seq": link.journal_head_seq,
        "desired_revision": link.desired_revision,
        "applied_revision": link.applied_revision,
    }
    if as_json:
        emit_json(report)
    else:
        click.echo(f"{node.node_id}: " + ("healthy" if not problems else "; ".join(problems)))
    if problems and check:
        ctx.exit(EXIT_UNHEALTHY)


@nodes.command("assign")
@click.argument("user_id")
@click.argument("node_id")
@click.option("--why", default="")
@click.pass_context
def assign(ctx, user_id, node_id, why) -> None:
    """Serve USER_ID on NODE_ID."""
    request = v1.AssignmentRequest(user_id=user_id, node_id=node_id, why=why)
    user = rpc(ctx, lambda stub: stub.assign(request))
    click.echo(f"{user.user_id} is on: {', '.join(user.node_ids)}")


@nodes.command("unassign")
@click.argument("user_id")
@click.argument("node_id")
@click.option("--why", default="")
@click.pass_context
def unassign(ctx, user_id, node_id, why) -> None:
    """Stop serving USER_ID on NODE_ID (the node drops the user)."""
    request = v1.AssignmentRequest(user_id=user_id, node_id=node_id, why=why)
    user = rpc(ctx, lambda stub: stub.unassign(request))
    click.echo(f"{user.user_id} is on: {', '.join(user.node_ids) or 'no node'}")


@nodes.command("revoke")
@click.argument("node_id")
@click.option("--reason", default="", help="Kept with the revocation.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def revoke(ctx, node_id, reason, yes, as_json) -> None:
    """Revoke every certificate of NODE_ID and drop its stream (admin role)."""
    confirm_or_abort(yes, f"Revoke node {node_id}? It will not be able to connect again.")
    request = v1.RevokeNodeRequest(node_id=node_id, reason=reason)
    node = rpc(ctx, lambda stub: stub.revoke_node(request))
    if not node.revoked:
        raise CommandError(f"node {node_id} still has an unrevoked certificate")
    if as_json:
        emit_json(plain(node))
    else:
        click.echo(f"revoked node {node_id}")
