"""Shared setup for agent <-> central tests: a CA, central in a thread, node configs."""

from __future__ import annotations

from pathlib import Path

import trio

from edgeward.agent.config import AgentConfig, CentralSettings, CoreSettings
from edgeward.central.desired import Inbound
from edgeward.proto import v1
from tests.central.helpers import TestPki, make_pki
from tests.e2e.central_thread import CentralThread

# The v2ray fixture's inbounds (tests/support/v2ray.py) as central knows them.
NODE_INBOUNDS = [
    Inbound("vless-in", v1.Engine.PROXY, v1.Protocol.VLESS),
    Inbound("trojan-in", v1.Engine.PROXY, v1.Protocol.TROJAN),
]
ADMIN = "admin:tests"


def start_central(tmp_path: Path, nodes: tuple[str, ...] = ("node-a",)) -> CentralThread:
    pki = make_pki(tmp_path / "pki")
    central = CentralThread(pki, tmp_path / "central.sqlite").start()
    for node_id in nodes:
        central.call(central.storage.add_node, node_id, NODE_INBOUNDS, actor=ADMIN)
    return central


def node_config(
    tmp_path: Path,
    pki: TestPki,
    central_address: str,
    *,
    node_id: str = "node-a",
    core_api: str = "127.0.0.1:1",
    sample_interval: float = 0.5,
    **central_settings,
) -> AgentConfig:
    pair = pki.node(node_id)
    settings = dict(
        address=central_address,
        server_name="localhost",
        ca_file=str(pki.ca_file),
        cert_file=str(pair.cert),
        key_file=str(pair.key),
        reconnect_min=0.05,
        reconnect_max=0.5,
        heartbeat_interval=2.0,
    )
    settings.update(central_settings)
    state = tmp_path / f"agent-{node_id}"
    state.mkdir(parents=True, exist_ok=True)
    return AgentConfig(
        node_id=node_id,
        state_dir=str(state),
        control_socket=str(state / "control.sock"),
        sample_interval=sample_interval,
        stop_grace=3.0,
        central=CentralSettings(**settings),
        core=CoreSettings(api=core_api, flavor="v2fly", poll_interval=0.3),
    )


async def central_call(central: CentralThread, fn, *args, **kwargs):
    """A storage call on central's loop, from trio."""
    return await trio.to_thread.run_sync(lambda: central.call(fn, *args, **kwargs))


async def wait_for(predicate, what: str, timeout: float = 20.0, poll: float = 0.1):
    """Poll an async or plain predicate until it is truthy (bounded)."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await trio.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def core_config(config: AgentConfig, core) -> AgentConfig:
    """The config pointed at a real v2ray core (tests/support/v2ray.py)."""
    from dataclasses import replace

    return replace(config, core=replace(config.core, api=f"127.0.0.1:{core.api_port}"))


async def fetch_as(core, workdir: Path, secret: str, url: str) -> int | None:
    """Bytes downloaded through the core as the VLESS user with `secret`; None when
    the core refuses the user (not served)."""
    from tests.support.v2ray import FetchFailed, fetch_through, open_client

    with open_client(workdir, core, "vless", secret) as client:
        try:
            return await trio.to_thread.run_sync(fetch_through, client.socks_port, url, 10.0)
        except FetchFailed:
            return None


async def core_bytes(core, email: str) -> int:
    """The core's own counters for a user (uplink + downlink), read independently."""
    from tests.support.rawcore import raw_query_stats

    stats = await trio.to_thread.run_sync(
        raw_query_stats, core.api_port, f"user>>>{email}>>>traffic"
    )
    return sum(stats.values())
