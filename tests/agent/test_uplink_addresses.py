"""Several central addresses (replicas): the config's list, and the uplink moving on to
the next address when one fails, against the real central over real mTLS."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from edgeward.agent import config as agent_config
from edgeward.agent.aio_bridge import open_island
from edgeward.agent.config import ConfigError
from edgeward.agent.journal import open_journal
from edgeward.agent.node import Node
from edgeward.agent.uplink import Uplink
from tests.e2e.agent_setup import node_config, start_central, wait_for
from tests.support.ports import free_port

BASE = 'node_id = "n1"\n[central]\n'


def test_addresses_extend_the_single_address_which_stays_first():
    one = agent_config.parse(BASE + 'address = "c1:7443"\n')
    assert one.central.all_addresses == ["c1:7443"]  # the single-address config is unchanged
    several = agent_config.parse(BASE + 'address = "c1:7443"\naddresses = ["c2:7443", "[::1]:1"]\n')
    assert several.central.all_addresses == ["c1:7443", "c2:7443", "[::1]:1"]
    assert agent_config.parse(BASE).central.all_addresses == []  # no central
    assert agent_config.parse(agent_config.to_toml(several)) == several


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('addresses = ["c2:7443"]\n', "central.addresses needs central.address"),
        ('address = "c1:7443"\naddresses = ["c2"]\n', "central.addresses: 'c2' is not host:port"),
        ('address = "c1:7443"\naddresses = "c2:1"\n', "addresses must be list"),
        ('address = "c1"\n', "central.address: 'c1' is not host:port"),
    ],
)
def test_bad_addresses_are_refused(settings: str, message: str):
    with pytest.raises(ConfigError, match=message):
        agent_config.parse(BASE + settings)


@pytest.fixture
def central(tmp_path: Path):
    central = start_central(tmp_path)
    try:
        yield central
    finally:
        central.stop()


async def test_a_dead_address_is_skipped_for_the_next_one(tmp_path, central):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = node_config(tmp_path, central.pki, dead)
    config = replace(config, central=replace(config.central, addresses=[central.address]))
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island, rng=random.Random(3))
            nursery.start_soon(uplink.run)
            await wait_for(lambda: uplink.status.state == "connected", "the second address")
            assert uplink.status.address == central.address
            refused = uplink.status.last_error or ""
            assert "ConnectionRefusedError" in refused and dead.split(":")[1] in refused
            # When that one goes away the node goes back to the first, then here again.
            await trio.to_thread.run_sync(central.stop)
            await wait_for(lambda: uplink.status.state != "connected", "the lost connection")
            await trio.to_thread.run_sync(central.start)
            await wait_for(lambda: uplink.status.state == "connected", "the reconnect")
            assert uplink.status.address == central.address and uplink.status.sessions == 2
            nursery.cancel_scope.cancel()
