"""The fleet layout (pure): names fit Linux's limits, nothing collides, bad input
is refused with a clear message, config files carry the layout's values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeward.agent.config import parse as parse_agent_config
from edgeward.central.config import parse_config as parse_central_config
from edgeward.devfleet.layout import (
    INBOUND_PORTS,
    agent_toml,
    central_toml,
    core_config,
    make_layout,
)


def test_interface_and_namespace_names_fit_and_are_unique():
    layout = make_layout(Path("/tmp/x"), name="abcd", subnet=254, nodes=9)
    links = [layout.bridge, layout.client_veth_host, layout.client_veth_ns]
    links += [n.veth_host for n in layout.nodes] + [n.veth_ns for n in layout.nodes]
    links += layout.wg_ifaces()
    assert all(len(name) <= 15 for name in links), [n for n in links if len(n) > 15]
    assert len(set(links)) == len(links)
    assert len(set(layout.namespaces())) == len(layout.namespaces())
    addresses = [layout.central_address, layout.blob_address, layout.client_address]
    addresses += [n.address for n in layout.nodes]
    assert len(set(addresses)) == len(addresses)
    assert all(a.startswith("10.254.0.") for a in addresses)


def test_two_fleets_share_no_name_or_address():
    a = make_layout(Path("/tmp/a"), name="ewf", subnet=77)
    b = make_layout(Path("/tmp/b"), name="ewt", subnet=78)
    assert not set(a.namespaces()) & set(b.namespaces())
    assert not set(a.wg_ifaces()) & set(b.wg_ifaces())
    assert a.central_address != b.central_address


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad"}, "fleet name 'Bad' must match"),
        ({"name": "toolong"}, "fleet name 'toolong' must match"),
        ({"subnet": 66}, "subnet 66 must be 16..254 and not 66"),
        ({"subnet": 300}, "subnet 300 must be 16..254"),
        ({"nodes": 0}, "a local fleet has 1..9 nodes, not 0"),
    ],
)
def test_bad_layout_input_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_layout(Path("/tmp/x"), **kwargs)


def test_central_config_is_valid_and_listens_on_the_fleet_bridge(tmp_path):
    layout = make_layout(tmp_path)
    config = parse_central_config(central_toml(layout, enforce_interval=0.5))
    assert (config.host, config.port) == (layout.central_address, 7443)
    assert config.database == layout.central_db
    assert config.ca_dir == layout.pki_dir
    assert config.enforce_interval == 0.5


def test_agent_config_is_valid_for_each_node(tmp_path):
    layout = make_layout(tmp_path)
    for node in layout.nodes:
        config = parse_agent_config(agent_toml(layout, node, sample_interval=0.5))
        assert config.node_id == node.node_id
        assert config.central.address == layout.central_endpoint
        assert config.core.flavor == "v2fly"
        assert config.wireguard.interfaces == [node.wg_iface]
        assert config.sample_interval == 0.5


def test_core_config_has_api_stats_and_inbounds_on_the_node_address(tmp_path):
    node = make_layout(tmp_path).nodes[1]
    config = json.loads(json.dumps(core_config(node)))
    assert config["api"]["services"] == ["HandlerService", "StatsService"]
    levels = config["policy"]["levels"]["0"]
    assert levels == {"statsUserUplink": True, "statsUserDownlink": True}
    by_tag = {i["tag"]: i for i in config["inbounds"]}
    assert by_tag["api"]["listen"] == "127.0.0.1"
    for tag, port in INBOUND_PORTS.items():
        assert (by_tag[tag]["listen"], by_tag[tag]["port"]) == (node.address, port)
