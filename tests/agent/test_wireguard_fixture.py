"""The wireguard-go namespace pair itself, checked with wireguard-tools only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import wgnet
from tests.support.wgnet import UAPI_DIR, missing_requirements, run, wg_pair_setup


def netns_names() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_wg_tool_configured_pair_carries_traffic_and_counts_it(wg_pair):
    a, b = wg_pair.a, wg_pair.b
    assert not wg_pair.ping(a, b.tunnel, count=1, deadline=2), (
        "no peers yet: the tunnel must be closed"
    )
    assert wg_pair.wg_dump_peers(a) == {}

    wg_pair.connect_with_wg_tool()
    assert wg_pair.ping(a, b.tunnel, count=5, size=1000)

    seen_by_a = wg_pair.wg_dump_peers(a)[b.public_key]
    seen_by_b = wg_pair.wg_dump_peers(b)[a.public_key]
    assert seen_by_a["allowed_ips"] == (b.tunnel_cidr,)
    assert seen_by_a["last_handshake"] > 0
    # five 1000-byte echoes each way: well over 5000 bytes of tunnel payload
    assert seen_by_a["tx_bytes"] > 5000 and seen_by_a["rx_bytes"] > 5000
    assert seen_by_b["tx_bytes"] > 5000 and seen_by_b["rx_bytes"] > 5000


def test_interfaces_are_unique_and_sockets_exist(wg_pair):
    for end in wg_pair.ends():
        assert (UAPI_DIR / f"{end.iface}.sock").is_socket()
        assert end.iface in run("ip", "netns", "exec", end.ns, "ip", "-o", "link")
    assert wg_pair.a.iface != wg_pair.b.iface
    assert wg_pair.a.ns != wg_pair.b.ns


def test_teardown_removes_everything_even_when_the_body_fails():
    reason = missing_requirements("userspace")
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="body failed"), wg_pair_setup() as pair:
        pids = [end.proc.pid for end in pair.ends()]
        names = {end.ns for end in pair.ends()}
        sockets = [UAPI_DIR / f"{end.iface}.sock" for end in pair.ends()]
        logdir = Path(pair.logdir)
        assert names <= netns_names()
        assert all(pid_alive(pid) for pid in pids)
        raise RuntimeError("body failed")
    assert not names & netns_names()
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(s.exists() for s in sockets)
    assert not logdir.exists()


def test_skip_reasons_name_root_and_the_missing_binaries(monkeypatch):
    monkeypatch.setattr(wgnet.os, "geteuid", lambda: 1000)
    assert "needs root" in missing_requirements("userspace")
    monkeypatch.setattr(wgnet.os, "geteuid", lambda: 0)
    monkeypatch.setattr(wgnet.shutil, "which", lambda b: None if b == "wireguard-go" else b)
    assert missing_requirements("userspace").startswith("wireguard-go not installed")
    monkeypatch.delenv(wgnet.WGVM_ENV, raising=False)
    assert "only inside the tests/vm QEMU VM" in missing_requirements("kernel")
