"""The CA's flows over a CAStore: enrollment, renewal, issuance, revocation.

Each flow validates everything first, signs, and only then records in one
transaction; a refused request writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from edgeward.pki import certs, names, tokens
from edgeward.pki.errors import InvalidInput, NotFound, PeerRejected
from edgeward.pki.names import Identity
from edgeward.pki.store import CAStore
from edgeward.pki.verify import check_peer_cert, check_server_cert


@dataclass(frozen=True)
class Issued:
    """A certificate just issued, with the private key when the CA generated it."""

    cert: x509.Certificate
    key_pem: bytes | None = None

    @property
    def cert_pem(self) -> bytes:
        return certs.cert_pem(self.cert)

    @property
    def serial(self) -> int:
        return self.cert.serial_number


def mint_enrollment_token(
    store: CAStore, node_id: str, now: datetime, ttl: timedelta = tokens.DEFAULT_TTL
) -> str:
    """A single-use token that lets `node_id` enroll until now + ttl."""
    token, claims = tokens.mint_token(store.token_secret(), node_id, now, ttl)
    store.record_token(claims, now)
    return token


def enroll(
    store: CAStore,
    node_id: str,
    token: str,
    csr_pem: bytes,
    now: datetime,
    validity: timedelta = certs.NODE_VALIDITY,
) -> bytes:
    """Central's enrollment entry point: sign the node's CSR if the token is valid, unused,
    unexpired and bound to `node_id`. Returns the certificate PEM.

    Raises TokenRejected (bad token) or InvalidInput (bad node id or CSR); on any error
    nothing is issued and the token stays unspent. Single use holds across processes.
    """
    names.validate_node_id(node_id)
    claims = tokens.read_token(store.token_secret(), token)
    tokens.check_claims(claims, node_id, now)
    csr = certs.load_csr(csr_pem)
    certs.check_csr_for_node(csr, node_id)
    cert = certs.issue(
        store.ca_cert,
        store.ca_key(),
        csr.public_key(),  # type: ignore[arg-type]
        certs.node_template(node_id),
        now,
        validity,
    )
    store.record_issued(cert, certs.identity_of(cert), now, "enroll", spend_token=claims.token_id)
    return certs.cert_pem(cert)


def sign_csr(
    store: CAStore,
    node_id: str,
    csr_pem: bytes,
    now: datetime,
    validity: timedelta = certs.NODE_VALIDITY,
) -> bytes:
    """Offline signing by an operator who holds the CA: no token needed."""
    names.validate_node_id(node_id)
    csr = certs.load_csr(csr_pem)
    certs.check_csr_for_node(csr, node_id)
    return _issue_node(store, csr.public_key(), node_id, now, validity, "sign-csr").cert_pem  # type: ignore[arg-type]


def renew(
    store: CAStore,
    current_cert: x509.Certificate | bytes,
    csr_pem: bytes,
    now: datetime,
    validity: timedelta = certs.NODE_VALIDITY,
) -> bytes:
    """Re-issue a node certificate. `current_cert` is the certificate the node
    authenticated with (the mTLS peer certificate on the stream); it must be a valid,
    unrevoked node certificate of this CA. The new certificate carries the same node id
    and the CSR's (usually fresh) key. The old one stays valid until it expires."""
    try:
        identity = check_peer_cert(current_cert, store.ca_cert, store.is_revoked, now, "node")
    except PeerRejected as e:
        raise InvalidInput(f"cannot renew: {e.reason}") from None
    node_id = identity.name
    csr = certs.load_csr(csr_pem)
    certs.check_csr_for_node(csr, node_id)
    via = f"renew:{certs.format_serial(identity.serial)}"
    return _issue_node(store, csr.public_key(), node_id, now, validity, via).cert_pem  # type: ignore[arg-type]


def issue_node(
    store: CAStore, node_id: str, now: datetime, validity: timedelta = certs.NODE_VALIDITY
) -> Issued:
    """A node certificate with a CA-generated key (tests, break-glass)."""
    key = certs.generate_key()
    issued = _issue_node(store, key.public_key(), node_id, now, validity, "issue")
    return Issued(issued.cert, certs.key_pem(key))


def _issue_node(
    store: CAStore,
    public_key: object,
    node_id: str,
    now: datetime,
    validity: timedelta,
    via: str,
) -> Issued:
    cert = certs.issue(
        store.ca_cert,
        store.ca_key(),
        public_key,  # type: ignore[arg-type]
        certs.node_template(node_id),
        now,
        validity,
    )
    store.record_issued(cert, certs.identity_of(cert), now, via)
    return Issued(cert)


def issue_server(
    store: CAStore,
    name: str,
    hosts: list[str],
    now: datetime,
    validity: timedelta = certs.SERVER_VALIDITY,
) -> Issued:
    """Central's server certificate (key generated here) for the given hostnames/IPs."""
    template = certs.server_template(name, hosts)
    key = certs.generate_key()
    cert = certs.issue(store.ca_cert, store.ca_key(), key.public_key(), template, now, validity)
    store.record_issued(cert, certs.identity_of(cert), now, "issue")
    return Issued(cert, certs.key_pem(key))


def issue_admin(
    store: CAStore,
    name: str,
    role: str,
    now: datetime,
    validity: timedelta = certs.ADMIN_VALIDITY,
) -> Issued:
    """An admin client certificate carrying `role` (admin, operator or viewer)."""
    template = certs.admin_template(name, role)
    key = certs.generate_key()
    cert = certs.issue(store.ca_cert, store.ca_key(), key.public_key(), template, now, validity)
    store.record_issued(cert, certs.identity_of(cert), now, "issue")
    return Issued(cert, certs.key_pem(key))


def resolve_revocation_target(store: CAStore, target: str) -> list[int]:
    """`node:ID`, `serial:HEX`, or a bare node id / serial. A bare value that names both
    a known node and a known serial is refused as ambiguous."""
    kind, _, value = target.partition(":")
    if kind == "node" and value:
        return _node_serials(store, value)
    if kind == "serial" and value:
        serial = certs.parse_serial(value)
        store.issued_cert(serial)  # NotFound if unknown
        return [serial]
    as_node = (
        [r.serial for r in store.issued(kind="node", name=target)]
        if names.NAME_PATTERN.fullmatch(target)
        else []
    )
    as_serial: list[int] = []
    try:
        serial = certs.parse_serial(target)
        store.issued_cert(serial)
        as_serial = [serial]
    except (InvalidInput, NotFound):
        pass
    if as_node and as_serial:
        raise InvalidInput(
            f"{target!r} is both a node id and a serial; write node:{target} or serial:{target}"
        )
    if not as_node and not as_serial:
        raise NotFound(f"no node or certificate serial {target!r} is known to this CA")
    return as_node or as_serial


def _node_serials(store: CAStore, node_id: str) -> list[int]:
    names.validate_node_id(node_id)
    serials = [r.serial for r in store.issued(kind="node", name=node_id)]
    if not serials:
        raise NotFound(f"no certificate was issued to node {node_id!r}")
    return serials


def revoke(store: CAStore, target: str, now: datetime, reason: str = "unspecified") -> list[int]:
    """Revoke a node's certificates (all of them) or one serial; returns the serials
    newly revoked (empty if all were already revoked)."""
    return store.revoke(resolve_revocation_target(store, target), now, reason)


def verify_cert(store: CAStore, cert_pem: bytes, now: datetime) -> Identity:
    """Full check of a certificate file against this CA (what `pki verify` prints)."""
    cert = certs.load_cert(cert_pem)
    if certs.identity_of(cert).kind == "central":
        identity = check_server_cert(cert, store.ca_cert, now)
        if store.is_revoked(cert.serial_number):
            raise PeerRejected(
                f"certificate serial {certs.format_serial(cert.serial_number)} is revoked"
            )
        return identity
    return check_peer_cert(cert, store.ca_cert, store.is_revoked, now)
