"""Names inside certificates: node ids, roles, and the edgeward identity URI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edgeward.pki.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROLES = ("admin", "operator", "viewer")
URI_SCHEME = "edgeward://"
# DNS names for node certificates live under a private pseudo-domain.
NODE_DNS_SUFFIX = ".node.edgeward"

Kind = Literal["node", "admin", "central"]


def validate_name(value: str, what: str = "node id") -> str:
    """Return `value` if it is a valid node id / name, else raise InvalidInput."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return value


def validate_node_id(node_id: str) -> str:
    return validate_name(node_id, "node id")


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def node_uri(node_id: str) -> str:
    return f"{URI_SCHEME}node/{validate_node_id(node_id)}"


def node_dns(node_id: str) -> str:
    return f"{validate_node_id(node_id)}{NODE_DNS_SUFFIX}"


def admin_uri(role: str, name: str) -> str:
    return f"{URI_SCHEME}admin/{validate_role(role)}/{validate_name(name, 'admin name')}"


def central_uri(name: str) -> str:
    return f"{URI_SCHEME}central/{validate_name(name, 'central name')}"


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for.

    kind "node": `name` is the node id, `role` is None.
    kind "admin": `name` is the admin's name, `role` one of ROLES.
    kind "central": `name` is central's name.
    """

    kind: Kind
    name: str
    serial: int
    role: str | None = None

    @property
    def node_id(self) -> str | None:
        return self.name if self.kind == "node" else None


def parse_identity_uri(uri: str) -> tuple[Kind, str, str | None]:
    """Parse one `edgeward://...` URI into (kind, name, role); InvalidInput otherwise."""
    if not uri.startswith(URI_SCHEME):
        raise InvalidInput(f"not an edgeward identity URI: {uri!r}")
    parts = uri[len(URI_SCHEME) :].split("/")
    match parts:
        case ["node", node_id]:
            return "node", validate_node_id(node_id), None
        case ["admin", role, name]:
            return "admin", validate_name(name, "admin name"), validate_role(role)
        case ["central", name]:
            return "central", validate_name(name, "central name"), None
    raise InvalidInput(f"unrecognised edgeward identity URI: {uri!r}")
