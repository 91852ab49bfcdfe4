"""A user's client configurations on their nodes, from stored credentials and inbounds."""

from __future__ import annotations

from typing import Any

from edgeward import links
from edgeward.proto import v1

from .admin_records import ClientCredentials, NodeInbound, NodeRow
from .desired import Inbound, UserState, proxy_secret
from .errors import InvalidInput, NotFound


def endpoint(node: NodeRow, item: NodeInbound) -> links.Endpoint:
    p = item.params
    return links.Endpoint(
        host=node.public_address,
        port=item.port,
        network=p.get("network", "tcp"),
        security=p.get("security", "none"),
        sni=p.get("sni", ""),
        path=p.get("path", ""),
        ws_host=p.get("host", ""),
        public_key=p.get("public_key", ""),
        short_id=p.get("short_id", ""),
        fingerprint=p.get("fingerprint", ""),
        flow=item.inbound.flow,
    )


def _secret(creds: ClientCredentials, inbound: Inbound) -> str:
    state = UserState(
        creds.user_id, creds.uuid, creds.password, "", creds.wg_preshared_key,
        creds.wg_address, None, False, v1.Reason.UNSPECIFIED,
    )  # fmt: skip
    return proxy_secret(state, inbound)


def node_links(
    creds: ClientCredentials, node: NodeRow, engines: tuple[v1.Engine, ...] = ()
) -> list[v1.ClientLink]:
    """Every client config of one user on one node (pure). Inbounds without a public
    port, of an engine the user's plan excludes, and Shadowsocks 2022 (its client key
    needs the server key) are skipped."""
    result = []
    for item in node.inbounds:
        inbound = item.inbound
        if not item.port or not node.public_address:
            continue
        if engines and inbound.engine not in engines:
            continue
        ep = endpoint(node, item)
        name = f"{creds.user_id}@{node.node_id}-{inbound.tag}"
        out = v1.ClientLink(
            node_id=node.node_id,
            inbound_tag=inbound.tag,
            engine=inbound.engine,
            protocol=inbound.protocol,
        )
        if inbound.engine == v1.Engine.WIREGUARD:
            out.wireguard_conf = links.wireguard_conf(
                private_key=creds.wg_private_key,
                address=creds.wg_address,
                preshared_key=creds.wg_preshared_key,
                server_public_key=item.params.get("public_key", ""),
                host=node.public_address,
                port=item.port,
                allowed_ips=item.params.get("allowed_ips", ""),
                dns=item.params.get("dns", ""),
                name=name,
            )
        elif inbound.protocol == v1.Protocol.VLESS:
            out.uri = links.vless_link(creds.uuid, ep, name)
        elif inbound.protocol == v1.Protocol.VMESS:
            out.uri = links.vmess_link(creds.uuid, ep, name)
        elif inbound.protocol == v1.Protocol.TROJAN:
            out.uri = links.trojan_link(creds.password, ep, name)
        elif inbound.protocol == v1.Protocol.SHADOWSOCKS and inbound.cipher:
            out.uri = links.shadowsocks_link(inbound.cipher, _secret(creds, inbound), ep, name)
        else:
            continue
        result.append(out)
    return result


async def client_links(storage: Any, user_id: str, node_id: str = "") -> list[v1.ClientLink]:
    user = await storage.get_user(user_id)
    if node_id and node_id not in user.node_ids:
        await storage.get_node(node_id)  # NotFound for an unknown node
        raise NotFound(f"user {user_id!r} is not assigned to node {node_id!r}")
    creds = await storage.client_credentials(user_id)
    engines = (await storage.get_plan(user.plan_id)).engines if user.plan_id else ()
    nodes = {row.node_id: row for row in await storage.list_nodes()}
    chosen = [node_id] if node_id else list(user.node_ids)
    result = []
    for nid in chosen:
        result += node_links(creds, nodes[nid], engines)
    if node_id and not result:
        raise InvalidInput(
            f"node {node_id!r} has no client-facing inbound (register its public address"
            " and inbound ports)"
        )
    return result
