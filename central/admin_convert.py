"""Storage records <-> edgeward.v1 admin messages (pure)."""

from __future__ import annotations

from edgeward.proto import v1

from .admin_records import LINK_PARAMS, NodeInbound, NodeRow, Plan
from .desired import Inbound
from .node_links import NodeLinkState
from .records import User


def inbound_to_proto(item: NodeInbound) -> v1.InboundInfo:
    i = item.inbound
    message = v1.InboundInfo(
        tag=i.tag, engine=i.engine, protocol=i.protocol, flow=i.flow, cipher=i.cipher,
        port=item.port,
    )  # fmt: skip
    for name in LINK_PARAMS:
        setattr(message, name, item.params.get(name, ""))
    return message


def inbound_from_proto(message: v1.InboundInfo) -> NodeInbound:
    inbound = Inbound(
        message.tag,
        v1.Engine(message.engine),
        v1.Protocol(message.protocol),
        message.flow,
        message.cipher,
    )
    params = {name: getattr(message, name) for name in LINK_PARAMS if getattr(message, name)}
    return NodeInbound(inbound, message.port, params)


def link_to_proto(state: NodeLinkState, desired_revision: int, last_seen_ms: int) -> v1.NodeLink:
    return v1.NodeLink(
        connected=state.connected,
        software_version=state.software_version,
        last_seen_ms=max(state.last_seen_ms, last_seen_ms),
        connected_since_ms=state.connected_since_ms if state.connected else 0,
        acked_seq=state.acked_seq,
        journal_head_seq=state.journal_head_seq,
        outbox_lag=state.outbox_lag,
        desired_revision=desired_revision,
        applied_revision=state.applied_revision,
        users_desired=state.users_desired,
        users_applied=state.users_applied,
        apply_errors=len(state.apply_errors),
    )


def node_to_proto(row: NodeRow, state: NodeLinkState, revoked: bool) -> v1.NodeInfo:
    link = link_to_proto(state, row.revision, row.last_seen_ms)
    if not state.acked_seq and not state.connected:
        link.acked_seq = 0
    return v1.NodeInfo(
        node_id=row.node_id,
        public_address=row.public_address,
        inbounds=[inbound_to_proto(i) for i in row.inbounds],
        link=link,
        users_assigned=row.users_assigned,
        revoked=revoked,
        uplink_bytes=row.uplink_bytes,
        downlink_bytes=row.downlink_bytes,
        created_at_ms=row.created_at_ms,
    )


def plan_to_proto(plan: Plan) -> v1.PlanInfo:
    return v1.PlanInfo(
        plan_id=plan.plan_id,
        data_limit_bytes=plan.data_limit_bytes,
        duration_days=plan.duration_days,
        engines=list(plan.engines),
        users=plan.users,
    )


def user_to_proto(user: User, with_credentials: bool) -> v1.UserInfo:
    return v1.UserInfo(
        user_id=user.user_id,
        plan_id=user.plan_id or "",
        data_limit_bytes=user.data_limit_bytes,
        expires_at_ms=user.expires_at_ms,
        admin_suspended=user.admin_suspended,
        enforced_reason=user.enforced_reason,
        uplink_bytes=user.uplink_bytes,
        downlink_bytes=user.downlink_bytes,
        quota_used_bytes=user.quota_used_bytes,
        node_ids=list(user.node_ids),
        uuid=user.uuid if with_credentials else "",
    )
