"""Helpers for pki tests (PEM files on disk, directory snapshots)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edgeward.pki import certs


def snapshot_dir(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (SQLite content read through SQL so WAL
    pages count), to show that a refused request changed nothing."""
    out: dict[str, bytes] = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.name.startswith("pki.sqlite"):
            out[str(f.relative_to(path))] = f.read_bytes()
    db = path / "pki.sqlite"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            dump = "\n".join(conn.iterdump())
        finally:
            conn.close()
        out["pki.sqlite<dump>"] = dump.encode()
    return out


@dataclass
class PemFiles:
    cert: Path
    key: Path


def write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> PemFiles:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return PemFiles(cert_file, key_file)


def csr_for(node_id: str) -> tuple[certs.PrivateKey, bytes]:
    key = certs.generate_key()
    return key, certs.make_csr(key, node_id)
