"""ssl.SSLContexts for central (server) and agents/admins (clients), and reading the
peer certificate from a grpclib connection."""

from __future__ import annotations

import ssl
from os import PathLike

StrPath = str | PathLike[str]


def server_context(
    cert_file: StrPath,
    key_file: StrPath,
    ca_file: StrPath,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """Central's context: TLS >= 1.2, ALPN h2, client certificates from our CA.

    With `require_client_cert=False` a client may connect without a certificate (the
    enrollment endpoint); one it does send is still verified against the CA.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_context(
    ca_file: StrPath,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
) -> ssl.SSLContext:
    """An agent's or admin's context: trusts only our CA, checks central's hostname,
    presents a client certificate if given (enrollment connects without one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def peer_cert_der(peer: object) -> bytes | None:
    """The DER certificate of a grpclib `Peer` (event.peer / stream.peer), or None.

    grpclib's `Peer.cert()` returns only `getpeercert()`'s dict; the DER form needs the
    ssl object from the transport, which grpclib keeps as `_transport`.
    """
    transport = getattr(peer, "_transport", None)
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)
