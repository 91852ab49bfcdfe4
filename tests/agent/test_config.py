"""The agent's TOML configuration: defaults, documented example, clear errors."""

from __future__ import annotations

import tomllib

import pytest

from edgeward.agent import config as agent_config
from edgeward.agent.config import AgentConfig, ConfigError


def test_example_documents_every_setting_at_its_default():
    text = agent_config.example()
    parsed = agent_config._build(AgentConfig, tomllib.loads(text), "example")
    assert parsed == AgentConfig()
    assert text.count("\n# ") >= 15  # one description line per setting


def test_minimal_file_fills_defaults(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('node_id = "edge-1"\n[core]\nflavor = "v2fly"\napi = "127.0.0.1:9"\n')
    loaded = agent_config.load(path)
    assert loaded.node_id == "edge-1"
    assert loaded.core.flavor == "v2fly"
    assert loaded.core.concurrency == 16
    assert loaded.sample_interval == 10.0
    assert loaded.journal_path.name == "journal.sqlite"


def test_integers_are_accepted_for_seconds():
    loaded = agent_config.parse('node_id = "n1"\nsample_interval = 5\n')
    assert loaded.sample_interval == 5.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('node_id = "Bad_Node"', "is not a valid node id"),
        ('node_id = "n1"\nsurprise = 1', "unknown setting 'surprise'"),
        ('node_id = "n1"\n[core]\nflavor = "clash"', "core.flavor must be 'xray' or 'v2fly'"),
        ('node_id = "n1"\nsample_interval = "10s"', "sample_interval must be float, not str"),
        ('node_id = "n1"\nsample_interval = 0', "must be positive"),
        ('node_id = "n1"\n[wireguard]\ninterfaces = [1]', "must be a list of strings"),
        ('node_id = "n1"\ncore = 3', "[core] must be a table"),
        ('node_id = "n1"\n[core]\nconcurrency = true', "concurrency must be int, not bool"),
        ("node_id = ", "agent.toml: "),
    ],
)
def test_bad_config_is_a_clear_error(text, message):
    with pytest.raises(ConfigError) as caught:
        agent_config.parse(text)
    assert message in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.toml: No such file"):
        agent_config.load(tmp_path / "nope.toml")
