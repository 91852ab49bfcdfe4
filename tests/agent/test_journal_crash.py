"""Crash safety: SIGKILL a process in the middle of a loop of commit_sample
calls, reopen its journal, and find every committed sample exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgeward.agent.deltas import DOWNLINK, ENGINE_PROXY, UPLINK, proxy_counter
from edgeward.agent.journal import open_journal

USERS = 1500
EPOCH = "1"

# The child samples forever: at step k every user's counters read
# k * (i + 1) bytes up and k * (i + 1) * 3 down. It resumes from the step its
# journal's baselines say it last committed, and prints each committed step.
CHILD = f"""
import sys, trio
from edgeward.agent.deltas import compute_deltas, proxy_counter, proxy_resolver
from edgeward.agent.journal import open_journal

USERS, EPOCH = {USERS}, {EPOCH!r}
resolve = proxy_resolver({{f"u{{i}}@x": f"user-{{i}}" for i in range(USERS)}})

async def main(path):
    async with open_journal(path) as journal:
        baselines = await journal.baselines("proxy", EPOCH)
        step = baselines.get(proxy_counter("u0@x", "uplink"), 0)
        while True:
            step += 1
            readings = {{}}
            for i in range(USERS):
                readings[proxy_counter(f"u{{i}}@x", "uplink")] = step * (i + 1)
                readings[proxy_counter(f"u{{i}}@x", "downlink")] = step * (i + 1) * 3
            sample = compute_deltas(
                baselines, readings, engine="proxy", epoch=EPOCH, resolve=resolve
            )
            await journal.commit_sample(sample, sampled_at_ms=step)
            baselines = sample.baselines
            print(step, flush=True)

trio.run(main, sys.argv[1])
"""


def run_and_kill(path: Path, min_steps: int, rng: random.Random) -> int:
    """Start the child, let it commit at least `min_steps` more samples, then
    SIGKILL it at a random moment. Returns the last step it reported."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as child:
        try:
            assert child.stdout is not None
            reported = []
            deadline = time.monotonic() + 60
            while len(reported) < min_steps and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    break
                reported.append(int(line))
            assert len(reported) >= min_steps, f"child reported only {reported}"
            time.sleep(rng.uniform(0, 0.05))  # land anywhere inside the next commits
            child.send_signal(signal.SIGKILL)
            reported += [int(x) for x in child.stdout.read().split()]
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    return reported[-1]


async def test_sigkill_mid_sampling_loses_nothing_and_counts_nothing_twice(tmp_path):
    path = tmp_path / "journal.db"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    last_steps = []
    for _ in range(3):
        last_steps.append(run_and_kill(path, min_steps=5, rng=rng))

        async with open_journal(path) as journal:
            baselines = await journal.baselines(ENGINE_PROXY, EPOCH)
            totals = await journal.outbox_totals()
            stats = await journal.outbox_stats()
        # The last committed step: every baseline belongs to the same sample.
        step = baselines[proxy_counter("u0@x", UPLINK)]
        assert step >= last_steps[-1]  # reported means committed
        assert step <= last_steps[-1] + 1  # at most the one it was killed after
        for i in range(USERS):
            up = baselines[proxy_counter(f"u{i}@x", UPLINK)]
            down = baselines[proxy_counter(f"u{i}@x", DOWNLINK)]
            assert (up, down) == (step * (i + 1), step * (i + 1) * 3)
            # outbox totals == baselines advanced: each committed sample once
            assert totals[(f"user-{i}", ENGINE_PROXY, EPOCH)] == (up, down)
        # one row per user per committed sample, seqs 1..N without gaps
        assert stats.rows == stats.high_seq == step * USERS
    assert last_steps[0] < last_steps[1] < last_steps[2]
