"""Checks a TLS peer's certificate after the handshake: CA, validity, SAN shape, usage,
revocation. Python's ssl already verified the chain for a CERT_REQUIRED server; this
is what ssl cannot know (revocation, edgeward identity), checked again in full so the
function is safe on its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeward.pki import certs
from edgeward.pki.errors import InvalidInput, PeerRejected
from edgeward.pki.names import Identity, Kind
from edgeward.pki.store import CAStore


class WrongKind(PeerRejected):
    """The certificate is valid but speaks for the wrong kind of peer (e.g. an admin on
    the node service): a permission problem, not an authentication one."""


def check_peer_cert(
    cert: x509.Certificate | bytes | None,
    ca_cert: x509.Certificate,
    is_revoked: Callable[[int], bool],
    now: datetime,
    expect: Kind | None = None,
) -> Identity:
    """Return the peer's Identity or raise PeerRejected with the reason.

    `cert` is a certificate, DER/PEM bytes, or None/b"" when the peer sent none.
    """
    if cert is None or cert == b"":
        raise PeerRejected("peer presented no client certificate")
    cert = _as_cert(cert)
    if not certs.is_issued_by(cert, ca_cert):
        raise PeerRejected("certificate was not issued by this edgeward CA")
    if now < cert.not_valid_before_utc:
        raise PeerRejected(
            f"certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now >= cert.not_valid_after_utc:
        raise PeerRejected(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
    try:
        identity = certs.identity_of(cert)
    except InvalidInput as e:
        raise PeerRejected(f"certificate has no valid edgeward identity: {e}") from None
    if identity.kind == "central" or not certs.has_usage(cert, ExtendedKeyUsageOID.CLIENT_AUTH):
        raise PeerRejected(
            f"certificate ({identity.kind} {identity.name!r}) is not a client certificate"
        )
    if is_revoked(cert.serial_number):
        raise PeerRejected(
            f"certificate serial {certs.format_serial(cert.serial_number)} "
            f"({identity.kind} {identity.name!r}) is revoked"
        )
    if expect is not None and identity.kind != expect:
        raise WrongKind(
            f"a {identity.kind} certificate ({identity.name!r}) cannot be used here; "
            f"{expect} certificate required"
        )
    return identity


def check_server_cert(
    cert: x509.Certificate | bytes, ca_cert: x509.Certificate, now: datetime
) -> Identity:
    """For agents and admins: the identity of central's server certificate."""
    cert = _as_cert(cert)
    if not certs.is_issued_by(cert, ca_cert):
        raise PeerRejected("server certificate was not issued by this edgeward CA")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise PeerRejected("server certificate is outside its validity period")
    identity = certs.identity_of(cert)
    if identity.kind != "central" or not certs.has_usage(cert, ExtendedKeyUsageOID.SERVER_AUTH):
        raise PeerRejected("certificate is not an edgeward central server certificate")
    return identity


def _as_cert(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        return certs.load_cert(cert)
    except InvalidInput as e:
        raise PeerRejected(f"certificate is unreadable: {e}") from None


class Verifier:
    """What central calls on every connection: `check_peer(der) -> Identity`.

    Revocation is one indexed SQLite lookup in the CA directory's state file, so a
    revocation recorded by `edgeward pki revoke` (another process) applies to the next
    connection without reloading anything.
    """

    def __init__(
        self,
        ca_cert: x509.Certificate,
        is_revoked: Callable[[int], bool],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ca_cert = ca_cert
        self.is_revoked = is_revoked
        self.clock = clock

    @classmethod
    def from_store(cls, store: CAStore, **kwargs: Callable[[], datetime]) -> Verifier:
        return cls(store.ca_cert, store.is_revoked, **kwargs)

    def check_peer(
        self,
        cert: x509.Certificate | bytes | None,
        expect: Kind | None = None,
        now: datetime | None = None,
    ) -> Identity:
        return check_peer_cert(
            cert, self.ca_cert, self.is_revoked, now or self.clock(), expect=expect
        )
