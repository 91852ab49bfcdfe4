"""What the live view shows: users, usage per node, suspensions (read from
central's database, read-only; pure formatting below the reader)."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .admin import read_only

REASONS = {0: "", 1: "quota", 2: "expired", 3: "admin"}


@dataclass(frozen=True)
class UserRow:
    user_id: str
    plan_id: str | None
    limit: int | None
    used: int
    reason: str  # "" while served
    per_node: dict[str, int]  # node -> uplink + downlink


def read_users(database: Path) -> list[UserRow]:
    with closing(read_only(database)) as db:
        users = db.execute(
            "SELECT user_id, plan_id, data_limit_bytes, quota_used_bytes, enforced_reason,"
            " admin_suspended FROM users ORDER BY user_id"
        ).fetchall()
        usage = db.execute(
            "SELECT user_id, node_id, sum(uplink_bytes + downlink_bytes) FROM usage_hourly"
            " GROUP BY user_id, node_id"
        ).fetchall()
    per_user: dict[str, dict[str, int]] = {}
    for user_id, node_id, total in usage:
        per_user.setdefault(user_id, {})[node_id] = total
    return [
        UserRow(uid, plan, limit, used, "admin" if admin else REASONS.get(reason, str(reason)),
                per_user.get(uid, {}))
        for uid, plan, limit, used, reason, admin in users
    ]  # fmt: skip


def human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render(rows: list[UserRow], node_ids: list[str], limit_rows: int = 8) -> list[str]:
    header = f"  {'user':<10} {'plan':<9} {'used':>9} {'limit':>9} " + " ".join(
        f"{n:>9}" for n in node_ids
    ) + "  state"  # fmt: skip
    lines = [header]
    for row in rows[:limit_rows]:
        state = f"SUSPENDED ({row.reason})" if row.reason else "served"
        nodes = " ".join(f"{human(row.per_node.get(n, 0)):>9}" for n in node_ids)
        lines.append(
            f"  {row.user_id:<10} {row.plan_id or '-':<9} {human(row.used):>9}"
            f" {human(row.limit):>9} {nodes}  {state}"
        )
    if len(rows) > limit_rows:
        lines.append(f"  ... and {len(rows) - limit_rows} more users")
    return lines
