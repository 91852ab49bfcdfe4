"""Errors raised by the pki library. Every message is fit to show an operator."""

from __future__ import annotations


class PkiError(Exception):
    """Base class: anything the pki library refuses."""


class InvalidInput(PkiError):
    """Malformed or unacceptable input (CSR, key type, node id, certificate)."""


class CAExists(PkiError):
    """A CA already exists where a new one was asked for."""


class CANotFound(PkiError):
    """No CA in the given directory."""


class NotFound(PkiError):
    """A node, serial or token the caller named is not known to this CA."""


class TokenRejected(PkiError):
    """An enrollment token is tampered, expired, reused or bound to another node."""


class PeerRejected(PkiError):
    """A TLS peer's certificate is not acceptable; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
