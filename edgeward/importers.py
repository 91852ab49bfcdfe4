"""Reading users from other panels' files (pure, apart from reading the file).

CSV: a header row, then one user a row. Columns (only `username` is required):
  username, uuid, password, data_limit (bytes, or 10G), expire (unix seconds, or
  ISO date/time; empty: never), used_traffic (bytes), status (active, disabled...),
  plan
Marzban: its SQLite database (`db.sqlite3`): table `users` (username, status,
  used_traffic, data_limit, expire as unix seconds) and table `proxies` (user_id,
  type, settings JSON holding `id` for VLESS/VMess and `password` for Trojan and
  Shadowsocks). A data_limit of 0 or NULL is unlimited; status `disabled` imports
  the user suspended; `expired`/`limited` users come over with their expiry and
  usage and are suspended by central's enforcement.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from edgeward.proto import v1

SQLITE_MAGIC = b"SQLite format 3\x00"
DISABLED = ("disabled", "suspended", "inactive", "on_hold")


class ImportFileError(ValueError):
    """The file cannot be read as the format given; nothing is imported."""


def detect(path: Path) -> str:
    with open(path, "rb") as f:
        return "marzban" if f.read(16) == SQLITE_MAGIC else "csv"


def read_users(path: Path, fmt: str = "auto") -> list[v1.ImportedUser]:
    fmt = detect(path) if fmt == "auto" else fmt
    if fmt == "marzban":
        return read_marzban(path)
    return read_csv(path)


def _user_id(name: str) -> str:
    # edgeward ids are lowercase (the cores compare emails case-insensitively).
    return name.strip().lower()


def _int(value: object, what: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ImportFileError(f"{where}: {what} {value!r} is not a whole number") from None


def _size(value: str, where: str) -> int | None:
    if not value.strip():
        return None
    from edgeward.commands.common import parse_size

    try:
        return parse_size(value, "data limit")
    except Exception as e:
        raise ImportFileError(f"{where}: data_limit: {getattr(e, 'message', e)}") from None


def _expiry(value: str, where: str) -> int | None:
    value = value.strip()
    if not value or value == "0":
        return None
    if value.isdigit():
        return int(value) * 1000
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ImportFileError(f"{where}: expire {value!r} is not unix seconds or ISO") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def read_csv(path: Path) -> list[v1.ImportedUser]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "username" not in reader.fieldnames:
                raise ImportFileError(f"{path}: a CSV import needs a header with 'username'")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ImportFileError(f"cannot read {path}: {e}") from None
    users = []
    for number, row in enumerate(rows, 2):
        where = f"{path.name} line {number}"
        limit = _size(row.get("data_limit") or "", where)
        users.append(
            v1.ImportedUser(
                user_id=_user_id(row.get("username") or ""),
                uuid=(row.get("uuid") or "").strip(),
                password=(row.get("password") or "").strip(),
                data_limit_bytes=limit or None,
                expires_at_ms=_expiry(row.get("expire") or "", where),
                used_bytes=_int(row.get("used_traffic"), "used_traffic", where) or 0,
                disabled=(row.get("status") or "").strip().lower() in DISABLED,
                plan_id=(row.get("plan") or "").strip(),
            )
        )
    return users


def read_marzban(path: Path) -> list[v1.ImportedUser]:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise ImportFileError(f"cannot open {path}: {e}") from None
    try:
        users = db.execute(
            "SELECT id, username, status, used_traffic, data_limit, expire FROM users ORDER BY id"
        ).fetchall()
        proxies = db.execute("SELECT user_id, type, settings FROM proxies").fetchall()
    except sqlite3.Error as e:
        raise ImportFileError(f"{path} is not a Marzban database: {e}") from None
    finally:
        db.close()
    secrets: dict[int, dict[str, str]] = {}
    for user_id, kind, settings in proxies:
        try:
            values = json.loads(settings) if isinstance(settings, str) else (settings or {})
        except json.JSONDecodeError:
            raise ImportFileError(f"{path}: proxy settings of user {user_id}: not JSON") from None
        mine = secrets.setdefault(user_id, {})
        kind = str(kind).lower()
        if kind in ("vless", "vmess") and values.get("id"):
            # VLESS and VMess share one UUID in edgeward; Marzban may hold two: VLESS wins.
            if kind == "vless" or "uuid" not in mine:
                mine["uuid"] = str(values["id"])
        elif (
            kind in ("trojan", "shadowsocks")
            and values.get("password")
            and (kind == "trojan" or "password" not in mine)
        ):
            mine["password"] = str(values["password"])
    result = []
    for marzban_id, username, status, used, limit, expire in users:
        where = f"{path.name} user {username!r}"
        expire_s = _int(expire, "expire", where)
        result.append(
            v1.ImportedUser(
                user_id=_user_id(username),
                uuid=secrets.get(marzban_id, {}).get("uuid", ""),
                password=secrets.get(marzban_id, {}).get("password", ""),
                data_limit_bytes=_int(limit, "data_limit", where) or None,
                expires_at_ms=expire_s * 1000 if expire_s else None,
                used_bytes=_int(used, "used_traffic", where) or 0,
                disabled=str(status).lower() in DISABLED,
            )
        )
    return result
