"""How the fleet tells central about nodes, plans and users.

`CliAdmin` is the operator's way: the `edgeward` command line with the fleet's
admin certificate (central's AdminService over mTLS), so every change reaches
connected nodes at once. `StorageAdmin` is the fallback for an edgeward without
the admin commands: it writes through central's own storage layer (one
transaction per change, the same validation) on central's database file, and a
change written that way reaches a node that is already connected only when its
stream restarts (central's change notifications live in central's process), so
the fleet registers nodes and the first users before the agents connect.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
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
CONFLICT_EXIT = 4  # edgeward's exit code for "already exists"
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


# ------------------------------------------------------------------ the CLI


def admin_cli_available() -> bool:
    """The installed `edgeward` has the admin commands (users, plans, nodes)."""
    from .tools import tool

    proc = subprocess.run([tool("edgeward"), "--help"], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    return all(f"  {group} " in proc.stdout for group in ("users", "plans", "nodes"))


def admin_toml(layout: FleetLayout) -> str:
    return (
        f'central = "{layout.central_endpoint}"\n'
        f'cert = "{layout.central_dir / "admin.crt"}"\n'
        f'key = "{layout.central_dir / "admin.key"}"\n'
        f'ca = "{layout.pki_dir / "ca.crt"}"\n'
    )


class CliAdmin:
    """`edgeward --config FLEET/admin.toml ...`, as an operator would type it."""

    def __init__(self, layout: FleetLayout) -> None:
        self.layout = layout

    @property
    def config(self) -> Path:
        return self.layout.dir / "admin.toml"

    def edgeward(self, *args: str) -> tuple[int, str]:
        from .tools import tool

        proc = subprocess.run(
            [tool("edgeward"), "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode not in (0, CONFLICT_EXIT):
            raise RuntimeError(f"edgeward {' '.join(args)}: {proc.stderr.strip()}")
        return proc.returncode, proc.stdout

    def add_node(self, node: NodeLayout) -> bool:
        from .layout import INBOUND_PORTS, WG_PORT
        from .nodes import ensure_wg_key

        inbounds = [
            f"tag={tag},protocol={tag.removesuffix('-in')},port={port}"
            for tag, port in INBOUND_PORTS.items()
        ]
        public_key = ensure_wg_key(node.wg_key)
        inbounds.append(f"tag={node.wg_iface},protocol=wireguard,port={WG_PORT},"
                        f"public_key={public_key}")  # fmt: skip
        args = ["nodes", "add", node.node_id, "--address", node.address]
        for inbound in inbounds:
            args += ["--inbound", inbound]
        return self.edgeward(*args)[0] == 0

    def add_plan(self, plan_id: str, limit_bytes: int | None, days: int | None) -> bool:
        args = ["plans", "add", plan_id]
        if limit_bytes is not None:
            args += ["--data-limit", str(limit_bytes)]
        if days is not None:
            args += ["--duration", str(days)]
        return self.edgeward(*args)[0] == 0

    def add_user(self, user_id: str, plan_id: str | None, node_ids: list[str]) -> dict:
        args = ["users", "add", user_id, "--json"]
        if plan_id is not None:
            args += ["--plan", plan_id]
        for node_id in node_ids:
            args += ["--node", node_id]
        code, out = self.edgeward(*args)
        if code == CONFLICT_EXIT:
            out = self.edgeward("users", "show", user_id, "--json")[1]
        return json.loads(out)
