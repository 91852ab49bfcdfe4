"""How the fleet tells central about nodes, plans and users.

`StorageAdmin` writes through central's own storage layer (central/admin.py,
one transaction per change, the same validation) on central's database file.
It is the bridge used until the admin CLI can do each of these through
central's AdminService: a change written here reaches a node that is already
connected only when its stream restarts (central's change notifications live
in central's process), so the fleet registers nodes and the first users
before the agents connect.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgeward.central.desired import Inbound
from edgeward.central.errors import Conflict
from edgeward.central.records import User
from edgeward.central.storage import SqliteStorage
from edgeward.proto import v1

from .layout import WG_POOL, FleetLayout, NodeLayout

ACTOR = "devfleet"
T = TypeVar("T")


def node_inbounds(node: NodeLayout) -> list[Inbound]:
    return [
        Inbound("vless-in", v1.Engine.PROXY, v1.Protocol.VLESS),
        Inbound("vmess-in", v1.Engine.PROXY, v1.Protocol.VMESS),
        Inbound("trojan-in", v1.Engine.PROXY, v1.Protocol.TROJAN),
        Inbound(node.wg_iface, v1.Engine.WIREGUARD),
    ]


def _in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run in a thread of its own: callable from trio tests and plain scripts."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="devfleet-admin")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass(frozen=True)
class UserSecrets:
    """What a client needs to connect as the user (central's credentials table)."""

    user_id: str
    uuid: str
    wg_private_key: str
    wg_preshared_key: str
    wg_address: str


class StorageAdmin:
    def __init__(self, layout: FleetLayout) -> None:
        self.layout = layout

    def _call(self, fn: Callable[[SqliteStorage], Coroutine[Any, Any, T]]) -> T:
        async def run() -> T:
            storage = await SqliteStorage.open(self.layout.central_db, wg_pool=WG_POOL)
            try:
                return await fn(storage)
            finally:
                await storage.close()

        return _in_thread(run)

    def add_node(self, node: NodeLayout) -> bool:
        """Register the node; False if it was registered already."""

        async def add(storage: SqliteStorage) -> bool:
            try:
                await storage.add_node(node.node_id, node_inbounds(node), actor=ACTOR)
            except Conflict:
                return False
            return True

        return self._call(add)

    def add_plan(self, plan_id: str, limit_bytes: int | None, days: int | None) -> bool:
        async def add(storage: SqliteStorage) -> bool:
            try:
                await storage.create_plan(
                    plan_id, actor=ACTOR, data_limit_bytes=limit_bytes, duration_days=days
                )
            except Conflict:
                return False
            return True

        return self._call(add)

    def add_user(self, user_id: str, plan_id: str | None, node_ids: list[str]) -> User:
        """Create the user (or return the existing one)."""

        async def add(storage: SqliteStorage) -> User:
            try:
                return await storage.create_user(
                    user_id, actor=ACTOR, plan_id=plan_id, node_ids=node_ids
                )
            except Conflict:
                return await storage.get_user(user_id)

        return self._call(add)


def read_only(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)


def user_secrets(database: Path, user_id: str) -> UserSecrets:
    with closing(read_only(database)) as db:
        row = db.execute(
            "SELECT user_id, uuid, wg_private_key, wg_preshared_key, wg_address"
            " FROM credentials WHERE user_id = ?",
            (user_id,),
        ).fetchone()
    if row is None:
        raise KeyError(f"no user {user_id!r} in {database}")
    return UserSecrets(*row)
