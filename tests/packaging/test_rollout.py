"""packaging/rollout: staging and health logic, then a real rollout over chroot nodes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.admin.fleet import Fleet, running_fleet
from tests.packaging import chroot_agent
from tests.packaging.conftest import Packages
from tests.packaging.rollout_fleet import (
    ChrootNode,
    health,
    health_command,
    transport_command,
    wait_health,
)
from tests.packaging.system import REPO, Chroot, ChrootCache, run

spec = importlib.util.spec_from_file_location(
    "packaging_rollout", REPO / "packaging/rollout/rollout.py"
)
assert spec and spec.loader
rollout = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = rollout  # dataclasses look their module up there
spec.loader.exec_module(rollout)
Health = rollout.Health


def test_stages_are_canary_then_batches_in_order():
    nodes = [f"n{i}" for i in range(8)]
    assert rollout.plan_stages(nodes, 1, 3) == [
        ["n0"],
        ["n1", "n2", "n3"],
        ["n4", "n5", "n6"],
        ["n7"],
    ]
    assert rollout.plan_stages(nodes[:2], 2, 5) == [["n0", "n1"]]
    assert rollout.plan_stages([], 1, 5) == []


@pytest.mark.parametrize(
    ("nodes", "canary", "batch", "error"),
    [
        (["a", "b", "a"], 1, 1, "a node is listed twice"),
        (["a"], 0, 1, "--canary and --batch must be at least 1"),
        (["a"], 1, 0, "--canary and --batch must be at least 1"),
    ],
)
def test_bad_plans_are_refused(nodes, canary, batch, error):
    with pytest.raises(rollout.RolloutError, match=error):
        rollout.plan_stages(nodes, canary, batch)


def test_judge_needs_connected_new_version_and_draining_outbox():
    new = "0.2.0"
    assert rollout.judge([], new) == "no health report yet"
    assert rollout.judge([Health(False, new, 0)], new) == "not connected to central"
    assert rollout.judge([Health(True, "0.1.0", 0)], new) == "runs version 0.1.0, not 0.2.0"
    assert rollout.judge([Health(True, new, 0)], new) is None
    stuck = [Health(True, new, 40), Health(True, new, 40)]
    assert rollout.judge(stuck, new) == "outbox not draining (40 unsent)"
    draining = [Health(True, "0.1.0", 90), Health(True, new, 40), Health(True, new, 12)]
    assert rollout.judge(draining, new) is None
    growing = [Health(True, new, 40), Health(True, new, 45)]
    assert rollout.judge(growing, new) == "outbox not draining (45 unsent)"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not the expected JSON"),
        ('{"connected": true, "version": "1"}', "not the expected JSON"),
        ('{"connected": "yes", "version": "1", "outbox": 0}', "bad field"),
        ('{"connected": true, "version": "1", "outbox": -1}', "bad field"),
    ],
)
def test_bad_health_output_is_a_clear_error(text, error):
    with pytest.raises(rollout.RolloutError, match=error):
        Health.parse(text)


def broken_copy(deb: Path, where: Path) -> Path:
    """The same package with a program that cannot start (a release gone wrong)."""
    tree = where / "tree"
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    launcher = tree / "usr/bin/edgeward-agent"
    launcher.write_text("#!/usr/bin/python3.11 -IS\nimport edgeward_module_left_out_of_the_build\n")
    broken = where / deb.name.replace(".deb", "-broken.deb")
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(broken)])
    return broken


def roll(nodes_file: Path, fleet: Fleet, nodes_dir: Path, package: Path, previous: Path):
    return subprocess.run(
        [str(REPO / "packaging/rollout/rollout"), "--package", str(package),
         "--previous", str(previous), "--nodes", str(nodes_file),
         "--transport", transport_command(nodes_dir), "--health", health_command(fleet),
         "--canary", "1", "--batch", "2", "--timeout", str(HEALTHY_WITHIN), "--interval", "0.5"],
        text=True, capture_output=True, timeout=300,
    )  # fmt: skip


# Seconds a node gets to report healthy; a good node needs about one (agent start,
# TLS, Hello), the broken canary uses all of it.
HEALTHY_WITHIN = 15


def test_rollout_over_real_agents_stops_a_broken_release_at_the_canary_then_rolls_a_good_one(
    chroot_cache: ChrootCache, packages: Packages, tmp_path: Path
):
    old_deb, new_deb = packages.old.deb("edgeward-agent"), packages.new.deb("edgeward-agent")
    old, new = packages.old.version, packages.new.version
    nodes_dir = tmp_path / "nodes"
    tarball = chroot_cache.wait()
    nodes: list[ChrootNode] = []
    with running_fleet(tmp_path / "central") as fleet:
        try:
            for i in range(3):
                node = ChrootNode(f"edge-{i}", Chroot.extract(tarball, nodes_dir / f"edge-{i}"))
                nodes.append(node)
                node.install_and_enroll(fleet, old_deb)
                node.start()
            for node in nodes:
                wait_health(fleet, node.node_id, connected=True, version=old)
                # as the unit runs it: the service user, reading the key enroll wrote as root
                assert node.agent_uid == chroot_agent.service_ids(node.root)[0] != 0
            nodes_file = tmp_path / "nodes.txt"
            nodes_file.write_text("".join(f"{node.node_id}\n" for node in nodes))
            untouched = {node.node_id: node.agent_pid for node in nodes[1:]}

            failed = roll(nodes_file, fleet, nodes_dir, broken_copy(new_deb, tmp_path), old_deb)
            assert failed.returncode == 1, failed.stdout + failed.stderr
            assert "rollout: STOP at canary: edge-0: not healthy after 15s: " in failed.stdout
            assert "not connected to central" in failed.stdout, failed.stdout
            assert "rolled back 1 node(s)" in failed.stdout
            assert "edge-1" not in failed.stdout and "edge-2" not in failed.stdout
            # the broken agent did start on the canary, and died at once
            assert "edgeward_module_left_out_of_the_build" in nodes[0].log
            # the canary reconnects on its old version; the others never saw the release
            wait_health(fleet, "edge-0", connected=True, version=old)
            assert [node.package_version() for node in nodes] == [f"{old}-1"] * 3
            assert {node.node_id: node.agent_pid for node in nodes[1:]} == untouched
            for node in nodes[1:]:
                assert health(fleet, node.node_id)["version"] == old

            good = roll(nodes_file, fleet, nodes_dir, new_deb, old_deb)
            assert good.returncode == 0, good.stdout + good.stderr
            lines = good.stdout.splitlines()
            assert "rollout: canary: edge-0" in lines
            assert "rollout: batch 1: edge-1, edge-2" in lines
            assert f"rollout: done: 3 nodes on {new}" in lines
            for node in nodes:  # central's own view, after the rollout
                report = health(fleet, node.node_id)
                assert (report["connected"], report["version"]) == (True, new), report
                assert report["outbox"] == 0 and report["healthy"], report
                assert node.package_version() == f"{new}-1"
        finally:
            for node in nodes:
                node.stop()  # SIGTERM, then SIGKILL after a bounded wait
                shutil.rmtree(node.root, ignore_errors=True)


@pytest.mark.parametrize(
    ("nodes", "extra", "error"),
    [
        ("a\nb\na\n", [], "a node is listed twice"),
        ("# only a comment\n", [], "lists no node"),
        ("a\n", ["--canary", "0"], "--canary and --batch must be at least 1"),
        ("a\n", ["--package", "/nonexistent.deb"], "/nonexistent.deb: no such file"),
    ],
)
def test_bad_input_is_refused_before_any_node_is_touched(tmp_path: Path, nodes, extra, error):
    package = tmp_path / "edgeward-agent_1.0-1_amd64.deb"
    package.write_bytes(b"not read before the checks pass")
    node_list = tmp_path / "nodes.txt"
    node_list.write_text(nodes)
    touched = tmp_path / "touched"
    done = subprocess.run(
        [str(REPO / "packaging/rollout/rollout"), "--package", str(package),
         "--previous", str(package), "--nodes", str(node_list),
         "--transport", f"sh -c 'touch {touched}' transport",
         "--health", "false", *extra],
        text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert error in done.stderr
    assert not touched.exists() and done.stdout == ""


def test_an_unreachable_canary_stops_the_rollout_and_says_so(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: edgeward-agent\nVersion: 9.9-1\nArchitecture: all\n"
        "Maintainer: test <t@edgeward.invalid>\nDescription: t\n"
    )
    package = tmp_path / "edgeward-agent_9.9-1_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(package)])
    node_list = tmp_path / "nodes.txt"
    node_list.write_text("edge-1\nedge-2\n")
    done = subprocess.run(
        [str(REPO / "packaging/rollout/rollout"), "--package", str(package),
         "--previous", str(package), "--nodes", str(node_list),
         "--transport", "/nonexistent/transport {node}", "--health", "true"],
        text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rollout: STOP at canary: edge-1: installing edgeward-agent_9.9-1_all.deb failed: " in (
        done.stdout
    )
    assert "rollout: edge-1: ROLLBACK FAILED" in done.stdout
    assert "edge-2" not in done.stdout
