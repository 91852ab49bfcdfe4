"""The systemd units: required settings and a hardening score that must not regress."""

from __future__ import annotations

import re
import shutil
import subprocess
from configparser import ConfigParser

import pytest

from tests.packaging.system import REPO

UNITS = REPO / "packaging" / "systemd"
# `systemd-analyze security` exposure (0 = most hardened, 10 = none), recorded
# in packaging/README.md; hardening may only get better
EXPOSURE_AT_MOST = {"edgeward-agent": 1.5, "edgeward-central": 1.1}


def service(package: str) -> dict[str, list[str]]:
    """The [Service] section, each setting with all its values (settings repeat)."""
    parser = ConfigParser(strict=False, interpolation=None, dict_type=_MultiDict)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / f"{package}.service")
    return {key: value.split("\n") for key, value in parser["Service"].items()}


class _MultiDict(dict):
    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


@pytest.mark.parametrize("package", ["edgeward-agent", "edgeward-central"])
def test_unit_is_notify_with_watchdog_state_and_config(package: str):
    unit = service(package)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    config = "agent.toml" if package == "edgeward-agent" else "central.toml"
    assert unit["ExecStart"] == [f"/usr/bin/{package} run --config /etc/edgeward/{config}"]
    assert unit["StateDirectory"] == [package] and unit["ConfigurationDirectory"] == ["edgeward"]
    assert unit["User"] == [package] and unit["ProtectSystem"] == ["strict"]


def test_only_the_agent_gets_cap_net_admin():
    agent, central = service("edgeward-agent"), service("edgeward-central")
    assert agent["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert agent["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert "AmbientCapabilities" not in central
    assert central["CapabilityBoundingSet"] == [""]


@pytest.mark.parametrize("package", sorted(EXPOSURE_AT_MOST))
def test_security_exposure_stays_low(package: str):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is not installed (Debian package systemd)")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / f"{package}.service")],
        text=True,
        capture_output=True,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= EXPOSURE_AT_MOST[package], done.stdout


def test_sysusers_creates_the_units_user():
    for package in EXPOSURE_AT_MOST:
        conf = (REPO / "packaging" / "sysusers" / f"{package}.conf").read_text()
        entries = [line.split() for line in conf.splitlines() if line and line[0] != "#"]
        assert entries[0][:3] == ["u", package, "-"]
        assert service(package)["User"] == [package]
