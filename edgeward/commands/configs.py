"""`edgeward users links|subscription`: client configs, QR codes, subscription URLs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeward.proto import v1

from .common import emit_json, json_option, plain, rpc


def _filename(link: v1.ClientLink) -> str:
    return f"{link.node_id}-{link.inbound_tag}"


def register(users: click.Group) -> None:
    @users.command("links")
    @click.argument("user_id")
    @click.option("--node", default="", help="Only this node (default: every assigned node).")
    @click.option("--qr", is_flag=True, help="Show each config as a QR code in the terminal.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                  help="Write each config to this directory: .conf for WireGuard, .txt links,"
                       " and QR images.")  # fmt: skip
    @click.option("--qr-format", type=click.Choice(["png", "svg"]), default="png",
                  help="QR image format for --out.")  # fmt: skip
    @json_option
    @click.pass_context
    def links(ctx, user_id, node, qr, out_dir, qr_format, as_json) -> None:
        """Share links (vless://, vmess://, trojan://, ss://) and WireGuard .conf files of
        USER_ID, and the user's subscription URL (operator role: these are credentials)."""
        from edgeward import qr as qrcodes

        request = v1.ClientConfigRequest(user_id=user_id, node_id=node)
        response = rpc(ctx, lambda stub: stub.get_client_config(request))
        written = []
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for link in response.links:
                stem = out_dir / _filename(link)
                text = link.uri or link.wireguard_conf
                if link.wireguard_conf:
                    path = stem.with_suffix(".conf")
                    path.write_text(link.wireguard_conf)
                    path.chmod(0o600)  # holds the private key
                else:
                    path = stem.with_suffix(".txt")
                    path.write_text(link.uri + "\n")
                written.append(str(path))
                written.append(str(qrcodes.save(text, stem.with_suffix(f".{qr_format}"))))
        if as_json:
            data = plain(response)
            data["files"] = written
            emit_json(data)
            return
        for link in response.links:
            click.echo(f"# {link.node_id} {link.inbound_tag}")
            click.echo(link.uri or link.wireguard_conf.rstrip())
            if qr:
                click.echo(qrcodes.terminal(link.uri or link.wireguard_conf))
        if response.subscription_url:
            click.echo(f"# subscription\n{response.subscription_url}")
            if qr:
                click.echo(qrcodes.terminal(response.subscription_url))
        for path in written:
            click.echo(f"wrote {path}", err=True)

    @users.command("subscription")
    @click.argument("user_id")
    @click.option("--rotate", is_flag=True, help="New URL; the old one stops working.")
    @click.option("--revoke", is_flag=True, help="Revoke the URL without a new one.")
    @json_option
    @click.pass_context
    def subscription(ctx, user_id, rotate, revoke, as_json) -> None:
        """USER_ID's subscription URL (clients fetch the base64 link list from it)."""
        if rotate and revoke:
            raise click.UsageError("--rotate and --revoke exclude each other")
        if rotate or revoke:
            request = v1.SubscriptionRequest(user_id=user_id, revoke=revoke)
            response = rpc(ctx, lambda stub: stub.rotate_subscription(request))
        else:
            request = v1.ClientConfigRequest(user_id=user_id)
            response = rpc(ctx, lambda stub: stub.get_client_config(request))
        url = response.subscription_url
        if as_json:
            emit_json({"user_id": user_id, "subscription_url": url, "revoked": revoke})
        elif revoke:
            click.echo(f"revoked the subscription URL of {user_id}")
        else:
            click.echo(url or "central has no subscription endpoint ([subscription] listen)")
