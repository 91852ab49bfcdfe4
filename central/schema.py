"""central's database schema as numbered migrations.

Each migration is a list of statements applied in one transaction together with
the bump of `schema_version`, so a crash mid-migration leaves the previous
version intact. The SQL is kept to what SQLite and PostgreSQL both accept where
that is cheap (BIGINT, TEXT, explicit primary keys), so a PostgreSQL storage can
reuse the table design.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[list[str]] = [
    # 1: nodes, plans, users, credentials, assignments, usage, leases, audit.
    [
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            created_at_ms BIGINT NOT NULL,
            revision BIGINT NOT NULL DEFAULT 0,   -- desired-state revision
            acked_seq BIGINT NOT NULL DEFAULT 0,  -- highest committed delta seq
            uplink_bytes BIGINT NOT NULL DEFAULT 0,
            downlink_bytes BIGINT NOT NULL DEFAULT 0,
            last_seen_ms BIGINT NOT NULL DEFAULT 0
        )""",
        # What a node serves: proxy inbounds (tag + protocol) and WireGuard interfaces.
        """CREATE TABLE node_inbounds (
            node_id TEXT NOT NULL REFERENCES nodes(node_id),
            tag TEXT NOT NULL,
            engine INTEGER NOT NULL,
            protocol INTEGER NOT NULL,
            flow TEXT NOT NULL DEFAULT '',
            cipher TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (node_id, tag)
        )""",
        """CREATE TABLE plans (
            plan_id TEXT PRIMARY KEY,
            data_limit_bytes BIGINT,               -- NULL: unlimited
            duration_days INTEGER                  -- NULL: never expires
        )""",
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            plan_id TEXT REFERENCES plans(plan_id),
            data_limit_bytes BIGINT,               -- NULL: unlimited
            expires_at_ms BIGINT,                  -- NULL: never
            created_at_ms BIGINT NOT NULL,
            admin_suspended INTEGER NOT NULL DEFAULT 0,
            enforced_reason INTEGER NOT NULL DEFAULT 0,  -- v1.Reason; 0: not suspended
            uplink_bytes BIGINT NOT NULL DEFAULT 0,
            downlink_bytes BIGINT NOT NULL DEFAULT 0,
            quota_used_bytes BIGINT NOT NULL DEFAULT 0  -- since the last renewal with reset
        )""",
        """CREATE TABLE credentials (
            user_id TEXT PRIMARY KEY REFERENCES users(user_id),
            uuid TEXT NOT NULL UNIQUE,
            password TEXT NOT NULL,
            wg_private_key TEXT NOT NULL,
            wg_public_key TEXT NOT NULL UNIQUE,
            wg_preshared_key TEXT NOT NULL,
            wg_index INTEGER NOT NULL UNIQUE,      -- host number in the address pool
            wg_address TEXT NOT NULL UNIQUE
        )""",
        # removed_at_ms keeps the history: deltas of a user once assigned still count.
        """CREATE TABLE assignments (
            user_id TEXT NOT NULL REFERENCES users(user_id),
            node_id TEXT NOT NULL REFERENCES nodes(node_id),
            assigned_at_ms BIGINT NOT NULL,
            removed_at_ms BIGINT,
            PRIMARY KEY (user_id, node_id)
        )""",
        "CREATE INDEX assignments_by_node ON assignments(node_id, user_id)",
        # The raw ledger: (node_id, seq) is a delta's identity, applied at most once.
        """CREATE TABLE deltas (
            node_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            user_id TEXT NOT NULL,
            engine INTEGER NOT NULL,
            epoch TEXT NOT NULL,
            uplink_bytes BIGINT NOT NULL,
            downlink_bytes BIGINT NOT NULL,
            sampled_at_ms BIGINT NOT NULL,
            counted INTEGER NOT NULL,              -- 0: rejected (user never on this node)
            PRIMARY KEY (node_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE usage_hourly (
            user_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            engine INTEGER NOT NULL,
            hour_ms BIGINT NOT NULL,
            uplink_bytes BIGINT NOT NULL,
            downlink_bytes BIGINT NOT NULL,
            PRIMARY KEY (user_id, node_id, engine, hour_ms)
        ) WITHOUT ROWID""",
        # A node's outstanding lease = granted_bytes - used_bytes (usage since the grant).
        """CREATE TABLE leases (
            user_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            lease_id BIGINT NOT NULL,
            granted_bytes BIGINT NOT NULL,
            used_bytes BIGINT NOT NULL DEFAULT 0,
            granted_at_ms BIGINT NOT NULL,
            PRIMARY KEY (user_id, node_id)
        )""",
        # Which users changed at each revision of a node's desired state: a node
        # holding revision R gets the users changed after R as one DesiredChange.
        """CREATE TABLE desired_log (
            node_id TEXT NOT NULL,
            revision BIGINT NOT NULL,
            user_id TEXT NOT NULL,
            PRIMARY KEY (node_id, revision, user_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        # Append-only: the database itself refuses edits of the audit log.
        """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
           BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
        """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
           BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    ],
    # 2: the admin surface (central/admin*.py): where clients connect, plan engines,
    # revocable subscription tokens.
    [
        "ALTER TABLE nodes ADD COLUMN public_address TEXT NOT NULL DEFAULT ''",
        # Client-facing inbound settings: port and link parameters (JSON, see admin_nodes.py).
        "ALTER TABLE node_inbounds ADD COLUMN port INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE node_inbounds ADD COLUMN link_params TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE plans ADD COLUMN engines TEXT NOT NULL DEFAULT ''",  # '': every engine
        """CREATE TABLE subscriptions (
            token TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            revoked_at_ms BIGINT                   -- NULL: valid
        )""",
        "CREATE INDEX subscriptions_by_user ON subscriptions(user_id)",
    ],
    # 3: node connection state as each central replica's streams see it (link_store.py),
    # so `nodes list/health` answer the same from any replica.
    [
        """CREATE TABLE node_links (
            node_id TEXT PRIMARY KEY,
            replica TEXT NOT NULL,                 -- the central process holding the stream
            connected INTEGER NOT NULL,
            software_version TEXT NOT NULL,
            connected_since_ms BIGINT NOT NULL,    -- orders connections: the newest wins
            last_seen_ms BIGINT NOT NULL,
            acked_seq BIGINT NOT NULL,
            journal_head_seq BIGINT NOT NULL,
            applied_revision BIGINT NOT NULL,
            users_desired BIGINT NOT NULL,
            users_applied BIGINT NOT NULL,
            apply_errors TEXT NOT NULL             -- JSON {user: message}
        )""",
    ],
    # Rollups by month (retention.py): an index on the hour so that retention deletes
    # old months' rows by range on SQLite. On PostgreSQL this statement becomes the
    # conversion of usage_hourly into a table partitioned by month (pg_schema.OVERRIDES,
    # pg_retention.py), whose old months are dropped whole.
    [
        "CREATE INDEX usage_hourly_by_hour ON usage_hourly(hour_ms)",
    ],
    # The raw ledger as one row per received batch (sqlite_ingest.py): the fresh deltas
    # of the batch in the wire's columnar encoding (usage_codec), keyed by their last
    # seq (stored batches never share a seq). A per-delta row cost as much as the
    # rollups; old `deltas` rows stay readable for replays. ledger_floor_seq: every
    # seq up to it was pruned by retention (prune_ledger) and counts as seen.
    [
        """CREATE TABLE usage_batches (
            node_id TEXT NOT NULL,
            last_seq BIGINT NOT NULL,
            first_seq BIGINT NOT NULL,
            received_at_ms BIGINT NOT NULL,
            rejected_users TEXT NOT NULL,          -- JSON list: ledgered, not counted
            payload BYTEA NOT NULL,                -- v1.UsageBatch bytes of the fresh deltas
            PRIMARY KEY (node_id, last_seq)
        )""",
        "CREATE INDEX usage_batches_by_time ON usage_batches(received_at_ms)",
        "ALTER TABLE nodes ADD COLUMN ledger_floor_seq BIGINT NOT NULL DEFAULT 0",
    ],
    # 6: batches are committed to the ledger first and added to rollups, totals and
    # lease use later, several at once (sqlite_fold.py). 0: not added yet. Rows from
    # before this migration were added when stored (1). PostgreSQL keeps its ledger in
    # `deltas` and applies each batch whole: there the column stays 1 and unused.
    [
        "ALTER TABLE usage_batches ADD COLUMN folded INTEGER NOT NULL DEFAULT 1",
        "CREATE INDEX usage_batches_unfolded ON usage_batches(node_id, last_seq) WHERE folded = 0",
    ],
]

LATEST_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer edgeward than this one."""


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> int:
    """Bring the database to LATEST_VERSION (tests: an older target); returns the
    version it was at.

    Runs on a plain sqlite3 connection (autocommit mode) before the async
    storage opens, each migration in its own transaction.
    """
    start = schema_version(conn)
    if start > LATEST_VERSION:
        raise SchemaTooNew(
            f"database schema version {start} is newer than this edgeward "
            f"(knows up to {LATEST_VERSION}); upgrade edgeward"
        )
    for version in range(start + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have ended it (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise
    return start
