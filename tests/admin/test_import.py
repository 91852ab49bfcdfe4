"""`edgeward users import` from a CSV file and from a Marzban-shaped SQLite database:
users, limits, expiry, used traffic and UUIDs/passwords preserved; a bad file imports
nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward import importers
from tests.admin.fleet import Fleet, running_fleet
from tests.central.backends import StorageBackend

FUTURE_S = 4070908800  # 2099-01-01
UUIDS = {
    "alice": "0d6a5b10-7c1e-4b8f-9a77-8f7e0c1a2b3c",
    "bob": "1e7b6c21-8d2f-4c90-8b88-907f1d2b3c4d",
    "carol": "2f8c7d32-9e30-4da1-9c99-a18f2e3c4d5e",
}

# Marzban's tables as its SQLAlchemy models create them (the columns the import reads,
# plus some it does not, to show they are ignored).
MARZBAN_SCHEMA = """
CREATE TABLE admins (id INTEGER PRIMARY KEY, username VARCHAR(34), hashed_password VARCHAR(128),
                     created_at DATETIME, is_sudo BOOLEAN);
CREATE TABLE users (
    id INTEGER PRIMARY KEY, username VARCHAR(34) COLLATE NOCASE UNIQUE,
    status VARCHAR(8) NOT NULL, used_traffic BIGINT, data_limit BIGINT,
    data_limit_reset_strategy VARCHAR(7) NOT NULL DEFAULT 'no_reset', expire INTEGER,
    admin_id INTEGER REFERENCES admins(id), created_at DATETIME, note VARCHAR(500),
    sub_updated_at DATETIME, sub_last_user_agent VARCHAR(512), online_at DATETIME,
    on_hold_expire_duration BIGINT, on_hold_timeout DATETIME);
CREATE TABLE proxies (
    id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
    type VARCHAR(11) NOT NULL, settings JSON NOT NULL);
"""


def marzban_db(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(MARZBAN_SCHEMA)
    db.execute("INSERT INTO admins VALUES (1, 'root', 'x', '2024-01-01', 1)")
    users = [
        (1, "Alice", "active", 5_000_000, 50_000_000_000, FUTURE_S),
        (2, "bob", "disabled", 0, None, None),
        (3, "carol", "expired", 123, 0, 1_600_000_000),
        (4, "dave", "limited", 20_000, 10_000, FUTURE_S),
    ]
    db.executemany(
        "INSERT INTO users (id, username, status, used_traffic, data_limit, expire, admin_id,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, 1, '2024-01-01 00:00:00')",
        users,
    )
    proxies = [
        (1, "VLESS", {"id": UUIDS["alice"], "flow": ""}),
        (1, "Trojan", {"password": "alice-trojan-pw"}),
        (1, "VMess", {"id": "ffffffff-0000-4000-8000-000000000000"}),
        (2, "VMess", {"id": UUIDS["bob"]}),
        (2, "Shadowsocks", {"password": "bob-ss", "method": "chacha20-ietf-poly1305"}),
        (3, "VLESS", {"id": UUIDS["carol"], "flow": "xtls-rprx-vision"}),
    ]
    db.executemany(
        "INSERT INTO proxies (user_id, type, settings) VALUES (?, ?, ?)",
        [(u, t, json.dumps(s)) for u, t, s in proxies],
    )
    db.commit()
    db.close()
    return path


@pytest.fixture
def fleet(tmp_path: Path, storage_backend: StorageBackend) -> Iterator[Fleet]:
    with running_fleet(tmp_path / "fleet", storage_backend) as fleet:
        fleet.ok("nodes", "add", "n1", "--address", "vpn1.example.com",
                 "--inbound", "tag=vless-in,protocol=vless,port=443",
                 "--inbound", "tag=trojan-in,protocol=trojan,port=8443")  # fmt: skip
        yield fleet


def users_by_id(fleet: Fleet) -> dict[str, dict]:
    return {u["user_id"]: u for u in fleet.json("users", "list", role="operator")}


def test_marzban_import_keeps_users_limits_expiry_usage_and_credentials(
    fleet: Fleet, tmp_path: Path
):
    path = marzban_db(tmp_path / "db.sqlite3")
    result = fleet.json("users", "import", str(path), "--node", "n1", role="operator")
    assert result == {"read": 4, "imported": 4, "dry_run": False, "source": "marzban:db.sqlite3"}
    users = users_by_id(fleet)
    assert sorted(users) == ["alice", "bob", "carol", "dave"]
    alice = users["alice"]
    assert alice["uuid"] == UUIDS["alice"]  # VLESS's UUID wins over VMess's
    assert alice["data_limit_bytes"] == 50_000_000_000
    assert alice["expires_at_ms"] == FUTURE_S * 1000
    assert alice["quota_used_bytes"] == 5_000_000
    assert alice["node_ids"] == ["n1"] and alice["enforced_reason"] == "unspecified"
    assert users["bob"]["uuid"] == UUIDS["bob"] and users["bob"]["admin_suspended"] is True
    assert users["bob"]["data_limit_bytes"] is None and users["bob"]["expires_at_ms"] is None
    # Expired and over-quota users come over as they were, suspended by enforcement.
    assert users["carol"]["enforced_reason"] == "expired"
    assert users["carol"]["expires_at_ms"] == 1_600_000_000_000
    assert users["dave"]["enforced_reason"] == "quota"
    # Passwords preserved: the trojan link carries Marzban's password.
    uris = [link["uri"] for link in
            fleet.json("users", "links", "alice", role="operator")["links"]]  # fmt: skip
    assert any(u.startswith("trojan://alice-trojan-pw@vpn1.example.com:8443") for u in uris)
    assert any(u.startswith(f"vless://{UUIDS['alice']}@") for u in uris)
    states = {s: [u["user_id"] for u in fleet.json("users", "list", "--state", s)]
              for s in ("active", "suspended", "admin", "quota", "expired")}  # fmt: skip
    assert states == {"active": ["alice"], "suspended": ["bob", "carol", "dave"],
                      "admin": ["bob"], "quota": ["dave"], "expired": ["carol"]}  # fmt: skip
    explained = fleet.json("explain", "carol")
    assert explained["reasons"][0].startswith("expired at 2020-09-13")


def test_csv_import_with_dry_run_then_real(fleet: Fleet, tmp_path: Path):
    fleet.ok("plans", "add", "monthly", "--duration", "30", "--data-limit", "10G")
    path = tmp_path / "users.csv"
    path.write_text(
        "username,uuid,password,data_limit,expire,used_traffic,status,plan\n"
        f"erin,{UUIDS['alice']},pw1,5G,2099-01-01,100,active,\n"
        "frank,,,,,,disabled,monthly\n"
    )
    before = fleet.dump()
    dry = fleet.json("users", "import", str(path), "--dry-run", role="operator")
    assert dry["read"] == 2 and dry["imported"] == 0 and dry["dry_run"] is True
    assert fleet.dump() == before
    started = time.time() * 1000
    fleet.ok("users", "import", str(path), "--node", "n1", role="operator")
    users = users_by_id(fleet)
    assert users["erin"]["uuid"] == UUIDS["alice"]
    assert users["erin"]["data_limit_bytes"] == 5_000_000_000
    assert users["erin"]["expires_at_ms"] == FUTURE_S * 1000
    assert users["erin"]["quota_used_bytes"] == 100
    assert users["frank"]["plan_id"] == "monthly" and users["frank"]["admin_suspended"] is True
    assert users["frank"]["expires_at_ms"] >= started + 30 * 86_400_000 - 1000


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("gina,not-a-uuid,,,,,,\n", "row 2 ('gina'): invalid UUID: 'not-a-uuid'"),
        ("gina,,,,,-5,,\n", "row 2 ('gina'): used bytes must be >= 0, got -5"),
        ("Gina!,,,,,,,\n", "invalid user id"),
        ("harry,,,,,,,\nharry,,,,,,,\n", "duplicate user id (also row 2)"),
        (f"gina,{UUIDS['bob']},,,,,,\nharry,{UUIDS['bob']},,,,,,\n", "duplicate UUID"),
        ("gina,,,,,,,gold\n", "unknown plan 'gold'"),
        ("existing,,,,,,,\n", "user 'existing' already exists"),
        (f"gina,{UUIDS['carol']},,,,,,\n", f"UUID {UUIDS['carol']} is already used by user"),
    ],
)
def test_a_bad_file_imports_nothing_and_lists_every_problem(
    fleet: Fleet, tmp_path: Path, rows: str, message: str
):
    fleet.ok("users", "add", "existing", "--uuid", UUIDS["carol"])
    path = tmp_path / "bad.csv"
    path.write_text("username,uuid,password,data_limit,expire,used_traffic,status,plan\n"
                    "okay-user,,,,,,,\n" + rows)  # fmt: skip
    before = fleet.dump()
    result = fleet.cli("users", "import", str(path), role="operator")
    assert result.exit_code == 2, result.output
    assert "import refused, nothing imported" in result.output
    assert message in result.output  # rows count users: okay-user is row 1
    assert fleet.dump() == before


def test_unreadable_files_are_refused_before_anything_is_sent(fleet: Fleet, tmp_path: Path):
    no_header = tmp_path / "x.csv"
    no_header.write_text("name,uuid\nx,y\n")
    result = fleet.cli("users", "import", str(no_header), role="operator")
    assert result.exit_code == 2 and "needs a header with 'username'" in result.output
    bad_limit = tmp_path / "y.csv"
    bad_limit.write_text("username,data_limit\nx,lots\n")
    result = fleet.cli("users", "import", str(bad_limit), role="operator")
    assert result.exit_code == 2 and "y.csv line 2: data_limit" in result.output
    not_marzban = tmp_path / "other.sqlite3"
    sqlite3.connect(not_marzban).execute("CREATE TABLE t (x)").connection.commit()
    result = fleet.cli("users", "import", str(not_marzban), role="operator")
    assert result.exit_code == 2 and "is not a Marzban database" in result.output


def test_marzban_reader_is_read_only_and_detects_the_format(tmp_path: Path):
    path = marzban_db(tmp_path / "db.sqlite3")
    before = path.read_bytes()
    assert importers.detect(path) == "marzban"
    rows = importers.read_users(path)
    assert [r.user_id for r in rows] == ["alice", "bob", "carol", "dave"]
    assert rows[1].password == "bob-ss"
    assert path.read_bytes() == before


def test_a_large_import_goes_in_batches_with_progress(fleet: Fleet, tmp_path: Path):
    path = tmp_path / "many.csv"
    path.write_text("username\n" + "".join(f"user-{i:04d}\n" for i in range(1200)))
    result = fleet.cli("users", "import", str(path), role="operator")
    assert result.exit_code == 0, result.output
    assert "imported 1200 user(s)" in result.stdout
    assert "importing" in result.stderr  # click's progress bar
    assert len(fleet.json("users", "list")) == 1200
