"""edgeward.v1.AdminService: the admin API on central's port, over mTLS.

Who calls is read from the admin certificate (role admin / operator / viewer)
on every request; each call declares the least role it needs:

  viewer   reads: status, nodes, plans, users (no credentials), usage, explain
  operator viewer + user and plan changes, assignments, imports, client configs
           and subscription URLs (they reveal credentials)
  admin    everything: also registering and revoking nodes

Storage errors become gRPC statuses (InvalidInput -> INVALID_ARGUMENT, NotFound
-> NOT_FOUND, Conflict -> ALREADY_EXISTS) carrying the message for the operator.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from edgeward import __version__
from edgeward.proto import v1

from . import explain, link_store, links_for_user
from .admin_convert import inbound_from_proto, node_to_proto, plan_to_proto, user_to_proto
from .admin_records import ImportRow
from .errors import STORAGE_ERRORS, Conflict, InvalidInput, NotFound
from .node_links import NodeLinkState
from .records import now_ms

log = logging.getLogger("edgeward.central.admin")

ADMIN_PREFIX = "/edgeward.v1.AdminService/"
ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}

# The admin identity of a request's peer, or the refusal (GRPCError) to raise.
current_admin: contextvars.ContextVar[Any] = contextvars.ContextVar("edgeward_central_admin")

T = TypeVar("T")


def install_admin_identity(server: Server, verifier: Any) -> None:
    """Check the certificate of every AdminService request (CA, validity, revocation,
    kind admin); the handler raises the refusal, so the status reaches the client."""
    from edgeward.pki.errors import PeerRejected
    from edgeward.pki.grpc_auth import rejection_status
    from edgeward.pki.tls import peer_cert_der

    async def on_recv_request(event: RecvRequest) -> None:
        if not event.method_name.startswith(ADMIN_PREFIX):
            return
        try:
            identity = verifier.check_peer(peer_cert_der(event.peer), expect="admin")
        except PeerRejected as e:
            current_admin.set(rejection_status(e))
        else:
            current_admin.set(identity)

    listen(server, RecvRequest, on_recv_request)


def requires(role: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """The least role a call needs; also maps storage errors to gRPC statuses."""

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def call(self: AdminService, message: Any) -> T:
            caller = current_admin.get(None)
            if caller is None:
                raise GRPCError(Status.UNAUTHENTICATED, "no admin identity on this connection")
            if isinstance(caller, GRPCError):
                raise caller
            if ROLE_RANK.get(caller.role, -1) < ROLE_RANK[role]:
                raise GRPCError(
                    Status.PERMISSION_DENIED,
                    f"{method.__name__.replace('_', ' ')} needs the {role} role;"
                    f" {caller.name!r} is {caller.role}",
                )
            try:
                return await method(self, message, caller)
            except InvalidInput as e:
                raise GRPCError(Status.INVALID_ARGUMENT, str(e)) from None
            except NotFound as e:
                raise GRPCError(Status.NOT_FOUND, str(e)) from None
            except Conflict as e:
                raise GRPCError(Status.ALREADY_EXISTS, str(e)) from None
            except STORAGE_ERRORS as e:
                log.error("%s by %s failed in storage: %s", method.__name__, caller.name, e)
                raise GRPCError(
                    Status.UNAVAILABLE,
                    f"central's storage failed ({e}): the call did not complete, try again later",
                ) from None

        return call

    return wrap


def _actor(caller: Any) -> str:
    return f"admin:{caller.name}"


def _can_see_credentials(caller: Any) -> bool:
    return ROLE_RANK.get(caller.role, -1) >= ROLE_RANK["operator"]


class AdminService(v1.AdminServiceBase):
    def __init__(
        self,
        storage: Any,
        node_service: Any,
        ca_store: Any,
        subscription_url: str = "",
    ) -> None:
        self.storage = storage
        self.nodes = node_service
        self.ca_store = ca_store
        self.subscription_url = subscription_url.rstrip("/")

    # ------------------------------------------------------------ status and nodes

    async def _links(self) -> dict[str, NodeLinkState]:
        """Every node's connection state: this replica's streams, and on a database shared
        by several replicas also what the others stored (link_store.py)."""
        local = self.nodes.links.states
        if not self.storage.shares_replicas:
            return dict(local)
        return link_store.merge_all(local, await self.storage.stored_links(), now_ms())

    @requires("viewer")
    async def get_status(self, message: v1.GetStatusRequest, caller: Any = None):
        nodes, users = await self.storage.counts()
        connected = sum(1 for s in (await self._links()).values() if s.connected)
        return v1.GetStatusResponse(
            central_version=__version__, nodes_total=nodes, nodes_connected=connected,
            users_total=users, caller=caller.name, caller_role=caller.role,
        )  # fmt: skip

    async def _node_info(self, row: Any, links: dict[str, NodeLinkState] | None = None):
        links = await self._links() if links is None else links
        state = links.get(row.node_id) or NodeLinkState()
        return node_to_proto(row, state, self._revoked(row.node_id))

    def _revoked(self, node_id: str) -> bool:
        records = self.ca_store.issued(kind="node", name=node_id)
        return bool(records) and all(r.revoked for r in records)

    @requires("admin")
    async def add_node(self, message: v1.AddNodeRequest, caller: Any = None):
        await self.storage.add_node(
            message.node_id,
            [inbound_from_proto(i) for i in message.inbounds],
            actor=_actor(caller),
            public_address=message.public_address,
        )
        return await self._node_info(await self.storage.get_node(message.node_id))

    @requires("viewer")
    async def list_nodes(self, message: v1.ListNodesRequest, caller: Any = None):
        rows = await self.storage.list_nodes()
        links = await self._links()
        return v1.ListNodesResponse(nodes=[await self._node_info(row, links) for row in rows])

    @requires("viewer")
    async def get_node(self, message: v1.NodeRef, caller: Any = None):
        return await self._node_info(await self.storage.get_node(message.node_id))

    @requires("admin")
    async def revoke_node(self, message: v1.RevokeNodeRequest, caller: Any = None):
        from edgeward.pki import authority
        from edgeward.pki.errors import PkiError

        row = await self.storage.get_node(message.node_id)  # NotFound first
        try:
            await asyncio.to_thread(
                authority.revoke,
                self.ca_store,
                f"node:{message.node_id}",
                datetime.now(UTC),
                message.reason or f"revoked by {caller.name}",
            )
        except PkiError as e:
            raise GRPCError(Status.FAILED_PRECONDITION, str(e)) from None
        # The verifier refuses the next connection; end the current one now (also on
        # the other replicas: they share the CA directory, so they refuse it too).
        for session in list(self.nodes.sessions):
            if session.node_id == message.node_id:
                session.inbox.put_nowait(("stop", None))
        await self.storage.end_other_streams(message.node_id, now_ms() + 1)
        log.warning("node %s revoked by %s", message.node_id, caller.name)
        return await self._node_info(row)

    @requires("operator")
    async def assign(self, message: v1.AssignmentRequest, caller: Any = None):
        await self.storage.assign(
            message.user_id, message.node_id, actor=_actor(caller), why=message.why
        )
        return user_to_proto(await self.storage.get_user(message.user_id), True)

    @requires("operator")
    async def unassign(self, message: v1.AssignmentRequest, caller: Any = None):
        await self.storage.unassign(
            message.user_id, message.node_id, actor=_actor(caller), why=message.why
        )
        return user_to_proto(await self.storage.get_user(message.user_id), True)

    # ------------------------------------------------------------ plans

    @requires("operator")
    async def add_plan(self, message: v1.PlanInfo, caller: Any = None):
        await self.storage.create_plan(
            message.plan_id,
            actor=_actor(caller),
            data_limit_bytes=message.data_limit_bytes,
            duration_days=message.duration_days,
            engines=[v1.Engine(e) for e in message.engines],
        )
        return plan_to_proto(await self.storage.get_plan(message.plan_id))

    @requires("viewer")
    async def list_plans(self, message: v1.ListPlansRequest, caller: Any = None):
        plans = await self.storage.list_plans()
        return v1.ListPlansResponse(plans=[plan_to_proto(p) for p in plans])

    @requires("viewer")
    async def get_plan(self, message: v1.PlanRef, caller: Any = None):
        return plan_to_proto(await self.storage.get_plan(message.plan_id))

    @requires("operator")
    async def delete_plan(self, message: v1.PlanRef, caller: Any = None):
        plan = await self.storage.get_plan(message.plan_id)
        await self.storage.delete_plan(message.plan_id, actor=_actor(caller))
        return plan_to_proto(plan)

    # ------------------------------------------------------------ users

    @requires("operator")
    async def add_user(self, message: v1.AddUserRequest, caller: Any = None):
        user = await self.storage.create_user(
            message.user_id,
            actor=_actor(caller),
            plan_id=message.plan_id or None,
            data_limit_bytes=message.data_limit_bytes,
            expires_at_ms=message.expires_at_ms,
            node_ids=message.node_ids,
            uuid=message.uuid or None,
            why=message.why,
        )
        return user_to_proto(user, True)

    @requires("viewer")
    async def list_users(self, message: v1.ListUsersRequest, caller: Any = None):
        users = await self.storage.list_users(message.node_id, message.plan_id)
        secrets = _can_see_credentials(caller)
        return v1.ListUsersResponse(users=[user_to_proto(u, secrets) for u in users])

    @requires("viewer")
    async def get_user(self, message: v1.UserRef, caller: Any = None):
        user = await self.storage.get_user(message.user_id)
        return user_to_proto(user, _can_see_credentials(caller))

    @requires("operator")
    async def renew_user(self, message: v1.RenewUserRequest, caller: Any = None):
        user = await self.storage.renew(
            message.user_id,
            actor=_actor(caller),
            expires_at_ms=message.expires_at_ms,
            reset_usage=message.reset_usage,
            why=message.why,
        )
        return user_to_proto(user, True)

    @requires("operator")
    async def top_up_user(self, message: v1.TopUpUserRequest, caller: Any = None):
        user = await self.storage.top_up(
            message.user_id, message.extra_bytes, actor=_actor(caller), why=message.why
        )
        return user_to_proto(user, True)

    @requires("operator")
    async def suspend_user(self, message: v1.SuspendUserRequest, caller: Any = None):
        why = message.why or ("suspended" if message.suspended else "resumed") + " by operator"
        user = await self.storage.set_suspended(
            message.user_id, message.suspended, actor=_actor(caller), why=why
        )
        return user_to_proto(user, True)

    @requires("operator")
    async def reissue_user(self, message: v1.UserRef, caller: Any = None):
        await self.storage.reissue(message.user_id, actor=_actor(caller), why=message.why)
        return user_to_proto(await self.storage.get_user(message.user_id), True)

    @requires("operator")
    async def delete_user(self, message: v1.UserRef, caller: Any = None):
        user = await self.storage.get_user(message.user_id)
        await self.storage.delete_user(message.user_id, actor=_actor(caller), why=message.why)
        return user_to_proto(user, True)

    @requires("operator")
    async def import_users(self, message: v1.ImportUsersRequest, caller: Any = None):
        rows = [
            ImportRow(
                u.user_id,
                u.uuid,
                u.password,
                u.data_limit_bytes,
                u.expires_at_ms,
                u.used_bytes,
                u.disabled,
                u.plan_id,
            )
            for u in message.users
        ]
        imported = await self.storage.import_users(
            rows,
            actor=_actor(caller),
            node_ids=message.node_ids,
            validate_only=message.validate_only,
            source=message.source,
        )
        return v1.ImportUsersResponse(imported=imported)

    # ------------------------------------------------------------ usage, explain, configs

    @requires("viewer")
    async def get_usage(self, message: v1.UsageRequest, caller: Any = None):
        rows = await self.storage.usage(
            user_id=message.user_id,
            node_id=message.node_id,
            since_ms=message.since_ms,
            until_ms=message.until_ms,
            group_by=message.group_by,
        )
        return v1.UsageResponse(
            rows=[
                v1.UsageRow(
                    user_id=r.user_id,
                    node_id=r.node_id,
                    period_start_ms=r.period_start_ms,
                    uplink_bytes=r.uplink_bytes,
                    downlink_bytes=r.downlink_bytes,
                )
                for r in rows
            ],
            uplink_bytes=sum(r.uplink_bytes for r in rows),
            downlink_bytes=sum(r.downlink_bytes for r in rows),
        )

    @requires("viewer")
    async def explain(self, message: v1.UserRef, caller: Any = None):
        user = await self.storage.get_user(message.user_id)
        facts = await self.storage.user_node_facts(message.user_id)
        audit = await self.storage.audit_of(message.user_id)
        links = await self._links()
        states = {f.node_id: links.get(f.node_id) or NodeLinkState() for f in facts}
        revoked = {f.node_id: self._revoked(f.node_id) for f in facts}
        report = explain.explain(user, facts, states, revoked, explain.now_ms())
        return v1.ExplainResponse(
            user=user_to_proto(user, _can_see_credentials(caller)),
            served=report.served,
            reasons=report.reasons,
            nodes=report.nodes,
            summary=report.summary,
            recent_actions=[
                f"{explain.iso(e.at_ms)} {e.actor} {e.action}: {e.reason}" for e in audit
            ],
        )

    def _subscription(self, token: str | None) -> str:
        if not token or not self.subscription_url:
            return ""
        return f"{self.subscription_url}/sub/{token}"

    @requires("operator")
    async def get_client_config(self, message: v1.ClientConfigRequest, caller: Any = None):
        client_links = await links_for_user.client_links(
            self.storage, message.user_id, message.node_id
        )
        token = None
        if self.subscription_url:
            token = await self.storage.ensure_token(message.user_id, actor=_actor(caller))
        url = self._subscription(token)
        return v1.ClientConfigResponse(links=client_links, subscription_url=url)

    @requires("operator")
    async def rotate_subscription(self, message: v1.SubscriptionRequest, caller: Any = None):
        token = await self.storage.rotate_subscription(
            message.user_id, actor=_actor(caller), revoke_only=message.revoke
        )
        return v1.ClientConfigResponse(subscription_url=self._subscription(token))
