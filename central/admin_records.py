"""Plain records of the admin surface (reads of nodes, plans, usage; import rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from edgeward.proto import v1

from .desired import Inbound

# Link parameters an inbound may carry (how clients connect); anything else is refused.
LINK_PARAMS = (
    "network",
    "security",
    "sni",
    "path",
    "host",
    "public_key",
    "short_id",
    "fingerprint",
    "dns",
    "allowed_ips",
)


@dataclass(frozen=True)
class NodeInbound:
    """An inbound as clients see it: what the node serves plus where and how to connect."""

    inbound: Inbound
    port: int = 0
    params: dict[str, str] = field(default_factory=dict)

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    public_address: str
    inbounds: tuple[NodeInbound, ...]
    users_assigned: int
    uplink_bytes: int
    downlink_bytes: int
    created_at_ms: int
    last_seen_ms: int
    revision: int


@dataclass(frozen=True)
class Plan:
    plan_id: str
    data_limit_bytes: int | None
    duration_days: int | None
    engines: tuple[v1.Engine, ...]  # empty: every engine
    users: int = 0


@dataclass(frozen=True)
class ImportRow:
    user_id: str
    uuid: str = ""
    password: str = ""
    data_limit_bytes: int | None = None
    expires_at_ms: int | None = None
    used_bytes: int = 0
    disabled: bool = False
    plan_id: str = ""


@dataclass(frozen=True)
class UsageRow:
    user_id: str
    node_id: str
    period_start_ms: int
    uplink_bytes: int
    downlink_bytes: int


@dataclass(frozen=True)
class ClientCredentials:
    user_id: str
    uuid: str
    password: str
    wg_private_key: str
    wg_preshared_key: str
    wg_address: str


@dataclass(frozen=True)
class UserNodeFacts:
    """One assigned node of a user, as explain needs it."""

    node_id: str
    node_revision: int
    user_revision: int  # the revision of the user's latest change on the node
    lease_bytes: int | None  # outstanding lease; None: no lease (no data limit)
    uplink_bytes: int
    downlink_bytes: int
