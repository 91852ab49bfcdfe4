"""The quick start's scenario on a running fleet: a plan, a few users, real
traffic through real clients, a live view, a quota suspension. Bounded in time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import clients, vless
from .admin import UserSecrets, user_secrets
from .fleet import Fleet
from .layout import BLOB_PORT
from .live import human, read_users, render

MB = 1 << 20
PLANS = {"standard": (10 << 30, 30), "trial": (10 * MB, 1)}
# user -> (plan, nodes by index); the trial user runs out of quota during the demo.
USERS = {"alice": ("standard", (1, 2)), "bob": ("standard", (1, 2)), "carol": ("trial", (1,))}
SERVE_WAIT = 60.0


@dataclass
class DemoResult:
    suspended: str | None  # user suspended for quota, if it happened in time
    refused_after: int  # bytes carol moved before the node refused her
    wireguard_ok: bool


def seed(fleet: Fleet) -> None:
    """Plans and users (idempotent)."""
    for plan_id, (limit, days) in PLANS.items():
        fleet.admin.add_plan(plan_id, limit, days)
    for user_id, (plan_id, indexes) in USERS.items():
        nodes = [fleet.layout.nodes[i - 1].node_id for i in indexes if i <= len(fleet.layout.nodes)]
        fleet.admin.add_user(user_id, plan_id, nodes)


def wait_served(fleet: Fleet, user: UserSecrets, node_index: int, timeout: float) -> bool:
    layout = fleet.layout
    node = layout.nodes[node_index - 1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            vless.fetch(node.inbound("vless-in"), user.uuid, (layout.blob_address, BLOB_PORT),
                        "/blob/1", timeout=3)  # fmt: skip
            return True
        except (vless.NotServed, OSError):
            time.sleep(0.3)
    return False


def run_demo(fleet: Fleet, say: Callable[[str], None], duration: float = 45.0) -> DemoResult:
    layout = fleet.layout
    node_ids = [n.node_id for n in layout.nodes]
    secrets = {u: user_secrets(layout.central_db, u) for u in USERS}
    say("waiting until the nodes serve the users (the agents apply them to the cores)...")
    # On a second `up` a user may be suspended already (the trial's quota is spent).
    held = {row.user_id: row.reason for row in read_users(layout.central_db) if row.reason}
    for user_id, (_plan, indexes) in USERS.items():
        for i in indexes:
            if user_id in held:
                say(f"  {user_id} on node-{i}: suspended ({held[user_id]}) since an"
                    " earlier run")  # fmt: skip
                continue
            ok = wait_served(fleet, secrets[user_id], i, SERVE_WAIT)
            say(f"  {user_id} on node-{i}: {'served' if ok else 'NOT served'}")
    ports = {
        (u, i): clients.start_v2ray_client(fleet.procs, layout, layout.nodes[i - 1], secrets[u])
        for u, (_p, idx) in USERS.items()
        for i in idx
    }
    say(f"started {len(ports)} v2ray client processes (socks5 -> VLESS), curl through them")

    stop = threading.Event()
    result = DemoResult(None, 0, False)

    def steady(user_id: str, index: int, size: int) -> None:
        url = f"{layout.blob_url_base}/{size}"
        while not stop.is_set():
            try:
                clients.curl_through(ports[(user_id, index)], url)
            except (ConnectionError, OSError):
                stop.wait(0.5)
            stop.wait(1.0)

    def trial(user_id: str) -> None:
        url = f"{layout.blob_url_base}/{MB}"
        while not stop.is_set():
            try:
                result.refused_after += clients.curl_through(ports[(user_id, 1)], url, timeout=5)
            except (ConnectionError, OSError):
                return  # refused: the node removed the user from its core
            stop.wait(0.7)

    threads = [
        threading.Thread(target=steady, args=("alice", 1, 2 * MB), daemon=True),
        threading.Thread(target=steady, args=("alice", 2, MB), daemon=True),
        threading.Thread(target=steady, args=("bob", 2, 2 * MB), daemon=True),
        threading.Thread(target=trial, args=("carol",), daemon=True),
    ]
    for thread in threads:
        thread.start()
    result.wireguard_ok = _wireguard(fleet, secrets["alice"], say)
    deadline = time.monotonic() + duration
    try:
        while time.monotonic() < deadline:
            rows = read_users(layout.central_db)
            say(f"--- live view ({int(deadline - time.monotonic())} s left) ---")
            for line in render(rows, node_ids):
                say(line)
            suspended = [r for r in rows if r.reason == "quota"]
            if suspended and result.suspended is None:
                result.suspended = suspended[0].user_id
            if result.suspended and not threads[-1].is_alive():
                if result.refused_after:
                    say(f"==> {result.suspended} crossed the trial quota: central suspended her"
                        f" and node-1 refused her next download (after"
                        f" {human(result.refused_after)} in this run)")  # fmt: skip
                else:
                    say(f"==> {result.suspended} stays suspended: node-1 refuses her (quota"
                        " spent in an earlier run; `edgeward users topup` lifts it)")  # fmt: skip
                break
            time.sleep(2.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return result


def _wireguard(fleet: Fleet, user: UserSecrets, say: Callable[[str], None]) -> bool:
    """alice's WireGuard: a client interface in the clients namespace pinging node-1."""
    layout = fleet.layout
    node = layout.nodes[0]
    iface = clients.start_wg_client(fleet.procs, layout, node, user, clients.node_public_key(node))
    # The agent adds alice's peer to node-1's interface; give it a few tries.
    ok = any(clients.wg_ping(layout, node, count=3, size=64) for _ in range(5))
    if ok:
        ok = clients.wg_ping(layout, node, count=20, size=1200)
    say(f"WireGuard: alice via {iface} -> {node.node_id} tunnel {node.wg_address}: "
        f"{'20 pings of 1200 bytes answered' if ok else 'pings NOT answered'}")  # fmt: skip
    return ok
