"""The CA directory: CA certificate and key, token secret, and a SQLite state file.

Layout (the directory is created 0700):
    ca.crt      CA certificate, PEM, 0644
    ca.key      CA private key, PEM (PKCS#8), 0600
    token.key   HMAC secret for enrollment tokens, 0600
    pki.sqlite  issued certificates, revocations, tokens (0600, WAL)

Files are written atomically (temp file + fsync + rename + directory fsync). State
changes go through SQLite transactions (`BEGIN IMMEDIATE`), so token consumption and
revocation are safe across processes: a token is spent by one conditional UPDATE in
the same transaction that records the certificate it paid for.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgeward.pki import certs
from edgeward.pki.errors import CAExists, CANotFound, NotFound, TokenRejected
from edgeward.pki.names import Identity
from edgeward.pki.tokens import TokenClaims, new_secret

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TOKEN_KEY = "token.key"
STATE_DB = "pki.sqlite"
DEFAULT_DIR = Path("/etc/edgeward/pki")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued (
    serial      TEXT PRIMARY KEY,      -- hex; serials exceed SQLite's 64-bit INTEGER
    kind        TEXT NOT NULL,         -- node | admin | central
    name        TEXT NOT NULL,         -- node id, admin name or central name
    role        TEXT,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    via         TEXT NOT NULL,         -- enroll | sign-csr | renew | issue
    fingerprint TEXT NOT NULL,
    cert_pem    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_by_name ON issued (kind, name);
CREATE TABLE IF NOT EXISTS revoked (
    serial     TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL,
    reason     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    minted_at   INTEGER NOT NULL,
    used_at     INTEGER,
    used_serial TEXT
);
"""


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed or widened nothing; be explicit
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ts(when: datetime) -> int:
    return int(when.timestamp())


def _dt(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class IssuedRecord:
    serial: int
    kind: str
    name: str
    role: str | None
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    via: str
    fingerprint: str
    revoked: bool

    def state(self, now: datetime) -> str:
        if self.revoked:
            return "revoked"
        return "valid" if now < self.not_after else "expired"

    def as_json(self) -> dict[str, object]:
        return {
            "serial": certs.format_serial(self.serial),
            "kind": self.kind,
            "name": self.name,
            "role": self.role,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "issued_at": self.issued_at.isoformat(),
            "via": self.via,
            "fingerprint": self.fingerprint,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    node_id: str
    expires_at: datetime
    minted_at: datetime
    used_at: datetime | None
    used_serial: int | None

    def state(self, now: datetime) -> str:
        if self.used_at is not None:
            return "used"
        return "open" if now < self.expires_at else "expired"

    def as_json(self) -> dict[str, object]:
        return {
            "token_id": self.token_id,
            "node_id": self.node_id,
            "expires_at": self.expires_at.isoformat(),
            "minted_at": self.minted_at.isoformat(),
            "used_at": self.used_at.isoformat() if self.used_at else None,
            "used_serial": certs.format_serial(self.used_serial) if self.used_serial else None,
        }


class CAStore:
    """A CA directory opened for use. One per process is enough; methods are thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        for name in (CA_CERT, CA_KEY, TOKEN_KEY, STATE_DB):
            if not (self.path / name).exists():
                raise CANotFound(f"no edgeward CA in {self.path} (missing {name}); run `pki init`")
        self.ca_pem = (self.path / CA_CERT).read_bytes()
        self.ca_cert = certs.load_cert(self.ca_pem)
        self._lock = threading.Lock()
        self._db = _connect(self.path / STATE_DB)

    # ------------------------------------------------------------ creation

    @classmethod
    def init(
        cls,
        path: Path,
        name: str,
        now: datetime,
        *,
        force: bool = False,
        validity: timedelta = certs.CA_VALIDITY,
    ) -> CAStore:
        """Create a CA in `path`. An existing CA is refused unless `force`, which moves the
        old files into `path/replaced-<timestamp>/` rather than deleting them."""
        path = Path(path)
        existing = [n for n in (CA_CERT, CA_KEY, TOKEN_KEY, STATE_DB) if (path / n).exists()]
        if existing and not force:
            raise CAExists(
                f"a CA already exists in {path} ({', '.join(existing)}); "
                "use --force to replace it (the old files are kept aside)"
            )
        key = certs.generate_key()
        ca_cert = certs.create_ca(key, name, now, validity)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        if existing:
            aside = path / f"replaced-{now.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
            aside.mkdir(mode=0o700)
            for n in (CA_CERT, CA_KEY, TOKEN_KEY, STATE_DB, STATE_DB + "-wal", STATE_DB + "-shm"):
                if (path / n).exists():
                    os.replace(path / n, aside / n)
            fsync_dir(path)
        # State first and the CA certificate last: CAStore() treats a missing ca.crt
        # as "no CA", so a crash part-way leaves nothing half-usable.
        db = _connect(path / STATE_DB)
        db.close()
        os.chmod(path / STATE_DB, 0o600)
        atomic_write(path / TOKEN_KEY, new_secret(), 0o600)
        atomic_write(path / CA_KEY, certs.key_pem(key), 0o600)
        atomic_write(path / CA_CERT, certs.cert_pem(ca_cert), 0o644)
        return cls(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CAStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ secrets

    def ca_key(self) -> certs.PrivateKey:
        return certs.load_private_key((self.path / CA_KEY).read_bytes())

    def token_secret(self) -> bytes:
        return (self.path / TOKEN_KEY).read_bytes()

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite may have ended it (disk full)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ tokens

    def record_token(self, claims: TokenClaims, now: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (token_id, node_id, expires_at, minted_at) VALUES (?,?,?,?)",
                (claims.token_id, claims.node_id, _ts(claims.expires_at), _ts(now)),
            )

    def tokens(self) -> list[TokenRecord]:
        rows = self._query(
            "SELECT token_id, node_id, expires_at, minted_at, used_at, used_serial "
            "FROM tokens ORDER BY minted_at, rowid"
        )
        return [
            TokenRecord(
                token_id=r[0],
                node_id=r[1],
                expires_at=_dt(r[2]),  # type: ignore[arg-type]
                minted_at=_dt(r[3]),  # type: ignore[arg-type]
                used_at=_dt(r[4]),
                used_serial=int(r[5], 16) if r[5] else None,
            )
            for r in rows
        ]

    # ------------------------------------------------------------ issued certificates

    def record_issued(
        self,
        cert: certs.Certificate,
        identity: Identity,
        now: datetime,
        via: str,
        *,
        spend_token: str | None = None,
    ) -> None:
        """Record an issued certificate; with `spend_token`, spend that token in the same
        transaction, refusing (and recording nothing) if it is unknown or already spent."""
        serial = certs.format_serial(cert.serial_number)
        with self._tx() as db:
            if spend_token is not None:
                cur = db.execute(
                    "UPDATE tokens SET used_at = ?, used_serial = ? "
                    "WHERE token_id = ? AND used_at IS NULL",
                    (_ts(now), serial, spend_token),
                )
                if cur.rowcount != 1:
                    row = db.execute(
                        "SELECT used_at FROM tokens WHERE token_id = ?", (spend_token,)
                    ).fetchone()
                    if row is None:
                        raise TokenRejected("enrollment token is unknown to this CA")
                    raise TokenRejected(
                        f"enrollment token was already used at {_dt(row[0]).isoformat()}"  # type: ignore[union-attr]
                    )
            db.execute(
                "INSERT INTO issued (serial, kind, name, role, not_before, not_after, issued_at,"
                " via, fingerprint, cert_pem) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    serial,
                    identity.kind,
                    identity.name,
                    identity.role,
                    _ts(cert.not_valid_before_utc),
                    _ts(cert.not_valid_after_utc),
                    _ts(now),
                    via,
                    certs.fingerprint(cert),
                    certs.cert_pem(cert).decode(),
                ),
            )

    def issued(self, kind: str | None = None, name: str | None = None) -> list[IssuedRecord]:
        sql = (
            "SELECT i.serial, kind, name, role, not_before, not_after, issued_at, via,"
            " fingerprint, r.serial IS NOT NULL FROM issued i"
            " LEFT JOIN revoked r ON r.serial = i.serial WHERE 1=1"
        )
        args: list[object] = []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        sql += " ORDER BY issued_at, i.rowid"
        return [
            IssuedRecord(
                serial=int(r[0], 16),
                kind=r[1],
                name=r[2],
                role=r[3],
                not_before=_dt(r[4]),  # type: ignore[arg-type]
                not_after=_dt(r[5]),  # type: ignore[arg-type]
                issued_at=_dt(r[6]),  # type: ignore[arg-type]
                via=r[7],
                fingerprint=r[8],
                revoked=bool(r[9]),
            )
            for r in self._query(sql, tuple(args))
        ]

    def issued_cert(self, serial: int) -> certs.Certificate:
        rows = self._query(
            "SELECT cert_pem FROM issued WHERE serial = ?", (certs.format_serial(serial),)
        )
        if not rows:
            raise NotFound(f"no certificate with serial {certs.format_serial(serial)}")
        return certs.load_cert(rows[0][0].encode())

    # ------------------------------------------------------------ revocation

    def revoke(self, serials: list[int], now: datetime, reason: str) -> list[int]:
        """Revoke serials this CA issued; returns those newly revoked. Unknown serials are
        refused before anything is written."""
        with self._tx() as db:
            for serial in serials:
                hexs = certs.format_serial(serial)
                if not db.execute("SELECT 1 FROM issued WHERE serial = ?", (hexs,)).fetchone():
                    raise NotFound(f"no certificate with serial {hexs} was issued by this CA")
            newly = []
            for serial in serials:
                cur = db.execute(
                    "INSERT OR IGNORE INTO revoked (serial, revoked_at, reason) VALUES (?,?,?)",
                    (certs.format_serial(serial), _ts(now), reason),
                )
                if cur.rowcount == 1:
                    newly.append(serial)
        return newly

    def is_revoked(self, serial: int) -> bool:
        return bool(
            self._query("SELECT 1 FROM revoked WHERE serial = ?", (certs.format_serial(serial),))
        )

    def revoked(self) -> list[tuple[int, datetime, str]]:
        rows = self._query(
            "SELECT serial, revoked_at, reason FROM revoked ORDER BY revoked_at, rowid"
        )
        return [(int(s, 16), _dt(t), reason) for s, t, reason in rows]  # type: ignore[misc]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db
