"""central's tests use the session's PostgreSQL cluster and the `storage_backend`
fixture (SQLite and PostgreSQL) from tests/conftest.py."""
