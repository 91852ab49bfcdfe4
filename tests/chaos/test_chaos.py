"""The chaos test: a real fleet under seeded faults counts every byte exactly once.

CI runs 24 faults (every kind at least once). Longer: EDGEWARD_CHAOS_LONG=1
(200 faults), or `python -m tests.chaos.harness --long`. A failing run prints
its seed; EDGEWARD_CHAOS_SEED=N replays the same schedule.
"""

from __future__ import annotations

import os
import secrets

import pytest

from edgeward.devfleet.fleet import missing_requirements
from edgeward.devfleet.nodes import agent_commands

from .harness import run_chaos
from .schedule import KINDS


def test_every_byte_the_cores_counted_is_counted_once_by_central(tmp_path):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    seed = int(os.environ.get("EDGEWARD_CHAOS_SEED") or secrets.randbelow(1 << 31))
    faults = 200 if os.environ.get("EDGEWARD_CHAOS_LONG") == "1" else 24
    assert {"run", "status"} <= agent_commands()
    print(f"chaos seed {seed} (EDGEWARD_CHAOS_SEED={seed} replays this schedule)")
    events, verdict, chaos = run_chaos(
        tmp_path / "fleet", seed=seed, faults=faults,
        name="c" + secrets.token_hex(1), subnet=100 + secrets.randbelow(150),
    )  # fmt: skip
    assert events == faults >= 20
    # every kind happened, and did what it says
    assert set(chaos.faults_done) == set(KINDS), chaos.faults_done
    assert chaos.core_runs_closed == chaos.faults_done["core-restart"]
    assert chaos.central_kills == chaos.faults_done["central-restart"]
    assert chaos.replayed > 0, "the replays found no committed delta to send again"
    assert verdict.expected > 10_000_000, "too little traffic moved to prove anything"
    assert verdict.problems == [], f"seed {seed}: {verdict.problems[:10]}"
    assert verdict.double_counted == 0 and verdict.missing == 0
    assert verdict.difference == 0
    assert verdict.counted + verdict.lost_in_core_deaths == verdict.expected
