"""Errors central's storage raises on bad input. Each message is safe to show an admin."""

from __future__ import annotations

import sqlite3

import asyncpg

# Failures of the database under a request (disk full, I/O error, PostgreSQL gone):
# what was asked is not done and nothing is changed; asking again later may work.
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
)  # fmt: skip


class CentralError(Exception):
    """Base of every error central reports to an admin or a node."""


class InvalidInput(CentralError):
    """The request itself is wrong (bad id, negative limit, past expiry...)."""


class NotFound(CentralError):
    """A user, plan or node the request names does not exist."""


class Conflict(CentralError):
    """The request collides with stored data (duplicate name, duplicate UUID)."""


class NodeRefused(CentralError):
    """A node may not connect (unknown, revoked, or its certificate is unusable)."""


class StorageUnavailable(CentralError):
    """central's database cannot be opened (unreachable, refused, no such database)."""
