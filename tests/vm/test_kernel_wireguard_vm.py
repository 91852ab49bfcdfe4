"""Kernel WireGuard, for real: boot ONE throw-away QEMU VM (tests/vm/wgvm.sh)
running the `wgvm`-marked tests against the kernel's WireGuard, and require
that they ran and passed (a run that skipped everything is a failure)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "vm" / "wgvm.sh"
KERNEL_TESTS = "tests/agent/test_wireguard_kernel.py"
VM_TIMEOUT = 300  # the runner's own qemu timeout is 240 s
DEBIAN = "qemu-system-x86 busybox-static cpio kmod"


def outcome_counts(output: str) -> dict[str, int]:
    """Counts from pytest's final summary line, e.g. '3 passed, 1 skipped in 4.2s'."""
    summary = [
        line
        for line in output.splitlines()
        if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b.* in [\d.]+s", line)
    ]
    if not summary:
        return {}
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary[-1])}


def test_outcome_counts_reads_pytest_summaries():
    assert outcome_counts("x\n3 passed, 1 skipped in 4.20s\nWGVM_EXIT=0") == {
        "passed": 3,
        "skipped": 1,
    }
    assert outcome_counts("1 failed, 2 passed in 9.1s (0:00:09)") == {"failed": 1, "passed": 2}
    assert outcome_counts("wgvm: virtiofs mount failed") == {}


def test_kernel_wireguard_suite_passes_inside_the_vm():
    if os.geteuid() != 0:
        pytest.skip("the WireGuard VM needs root (virtiofsd); CI runs as root")
    missing = [b for b in ("qemu-system-x86_64", "cpio", "modprobe") if not shutil.which(b)]
    missing += [p for p in ("/usr/lib/qemu/virtiofsd", "/bin/busybox") if not os.path.exists(p)]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing (Debian packages: {DEBIAN})")

    command = [
        str(RUNNER), "--", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
        "--color=no", "-q", "-rA", "-m", "wgvm", KERNEL_TESTS,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # its own process group, so a timeout also ends qemu and virtiofsd
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=VM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    tail = (stdout + stderr)[-6000:]
    counts = outcome_counts(stdout)
    assert proc.returncode == 0, f"VM run failed (exit {proc.returncode}):\n{tail}"
    assert counts.get("passed", 0) > 0, f"no kernel WireGuard test ran:\n{tail}"
    assert not (counts.keys() & {"skipped", "failed", "error", "errors"}), tail
