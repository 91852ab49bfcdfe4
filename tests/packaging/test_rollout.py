"""packaging/rollout: staging and health logic, then a real rollout over chroot nodes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import Packages
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


def versions(nodes: list[Chroot]) -> list[str]:
    query = ("dpkg-query", "-W", "-f=${Version}", "edgeward-agent")
    return [node.run(*query).stdout for node in nodes]


def test_rollout_stops_at_a_broken_canary_rolls_back_then_rolls_a_good_version(
    chroot_cache: ChrootCache, packages: Packages, tmp_path: Path
):
    nodes = [Chroot.extract(chroot_cache.wait(), tmp_path / f"node{i}") for i in range(3)]
    try:
        old, new = packages.old.deb("edgeward-agent"), packages.new.deb("edgeward-agent")
        for node in nodes:
            node.run("dpkg", "-i", node.copy_in(old))
        node_list = tmp_path / "nodes.txt"
        node_list.write_text("".join(f"{node.root}\n" for node in nodes))
        probe = Path(__file__).with_name("chroot_node_health.py")

        def roll(package: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(REPO / "packaging/rollout/rollout"), "--package", str(package),
                 "--previous", str(old), "--nodes", str(node_list),
                 "--transport", "chroot {node}",
                 "--health", f"{sys.executable} {probe} {{node}}",
                 "--canary", "1", "--batch", "2", "--timeout", "3", "--interval", "0.5"],
                text=True, capture_output=True, timeout=300,
            )  # fmt: skip

        old_version = f"{packages.old.version}-1"
        failed = roll(broken_copy(new, tmp_path))
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"STOP at canary: {nodes[0].root}: not healthy" in failed.stdout
        assert "not connected to central" in failed.stdout, failed.stdout
        # the canary has its old version back and runs; the others were never touched
        assert versions(nodes) == [old_version] * 3
        assert nodes[0].run("edgeward-agent", "--version").stdout.split()[-1] == (
            packages.old.version
        )
        assert str(nodes[1].root) not in failed.stdout

        good = roll(new)
        assert good.returncode == 0, good.stdout + good.stderr
        assert versions(nodes) == [f"{packages.new.version}-1"] * 3
        stages = [line for line in good.stdout.splitlines() if ": /" in line and "batch" in line]
        assert stages == [f"rollout: batch 1: {nodes[1].root}, {nodes[2].root}"]
    finally:
        for node in nodes:
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
