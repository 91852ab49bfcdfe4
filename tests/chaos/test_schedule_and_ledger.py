"""The chaos harness's pure parts: a reproducible schedule, and an accounting
verdict that catches loss, double counting and an inconsistent central."""

from __future__ import annotations

import pytest

from .ledger import LedgerRow, Run, judge, summary_line
from .schedule import KINDS, plan_faults


def test_same_seed_same_schedule_and_every_kind_appears():
    a = plan_faults(7, 24, 2)
    assert a == plan_faults(7, 24, 2)
    assert a != plan_faults(8, 24, 2)
    assert {f.kind for f in a} == set(KINDS)
    assert all(0 <= f.node < 2 and f.hold > 0 and f.gap > 0 for f in a)


def test_bad_schedule_input_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan_faults(1, 3, 2, kinds=("agent-kill", "meteor"))
    with pytest.raises(ValueError, match="need count >= 0 and nodes >= 1"):
        plan_faults(1, 3, 0)


def row(node, epoch, user, up, down, first, last):
    return LedgerRow(node, epoch, user, up, down, first, last)


RUNS = [
    Run("n1", 0, 1000, {"a": (10, 100)}, killed=True),
    Run("n1", 1000, None, {"a": (5, 50)}, killed=False),
    Run("n2", 0, None, {"a": (7, 70)}, killed=False),
]


def test_exact_accounting_with_a_measured_core_death():
    ledger = [
        row("n1", "1", "a", 8, 90, 100, 900),  # the killed run: 2 + 10 bytes not sampled
        row("n1", "2", "a", 5, 50, 1100, 2000),
        row("n2", "1", "a", 7, 70, 100, 2000),
    ]
    verdict = judge(RUNS, ledger, {"a": (20, 210)})
    assert verdict.exact, verdict.problems
    assert (verdict.expected, verdict.counted, verdict.lost_in_core_deaths) == (242, 230, 12)
    assert verdict.difference == 0
    line = summary_line(21, verdict)
    assert line.startswith("chaos: 21 events injected, 242 bytes expected, 230 bytes counted,")
    assert "difference 0" in line


def test_double_counting_is_caught_even_when_a_loss_hides_it():
    ledger = [
        row("n1", "1", "a", 10, 100, 100, 900),
        row("n1", "2", "a", 5, 60, 1100, 2000),  # 10 too many
        row("n2", "1", "a", 7, 60, 100, 2000),  # 10 missing on a run that was not killed
    ]
    verdict = judge(RUNS, ledger, {"a": (22, 220)})
    assert not verdict.exact
    assert verdict.double_counted == 10 and verdict.missing == 10
    assert any("central 60 > core 50" in p for p in verdict.problems)


def test_central_totals_must_equal_its_ledger():
    ledger = [row("n2", "1", "a", 7, 70, 100, 2000)]
    verdict = judge([RUNS[2]], ledger, {"a": (7, 71)})
    assert not verdict.exact
    assert verdict.problems == ["user a: central totals (7, 71) != its ledger (7, 70)"]


def test_an_epoch_spanning_two_core_runs_is_a_problem():
    ledger = [row("n1", "1", "a", 15, 150, 500, 1500)]
    verdict = judge(RUNS[:2], ledger, {"a": (15, 150)})
    assert any("span no single core run" in p for p in verdict.problems)
