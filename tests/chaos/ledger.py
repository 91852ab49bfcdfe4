"""Byte-exact accounting of a chaos run (pure).

Reference: the cores' own counters. A core *run* is one process lifetime of a
node's core; the harness reads every run's counters last while no traffic
flows through it (before it kills the core, and at the end), so each run's
final reading is exact. central's ledger holds the deltas each agent sent,
with the agent's epoch; each epoch belongs to one run (mapped by the time of
its samples).

Per run and user, central counted <= the run's final reading; the difference
is traffic the core carried after the agent's last sample of a run that was
then killed ("lost by dying between samples"), reported on its own. The run
still alive at the end must match exactly. More than the reading anywhere is
double counting. central's per-user totals must equal the sum of its ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Bytes = tuple[int, int]  # (uplink, downlink)


@dataclass(frozen=True)
class Run:
    node: str
    started_ms: int
    ended_ms: int | None  # None: still running at the end
    final: dict[str, Bytes]  # user -> counters at the last (quiet) reading
    killed: bool


@dataclass(frozen=True)
class LedgerRow:
    node: str
    epoch: str
    user: str
    uplink: int
    downlink: int
    first_sample_ms: int
    last_sample_ms: int


@dataclass
class Verdict:
    expected: int = 0  # bytes the cores counted (sum of final readings)
    counted: int = 0  # bytes central counted
    lost_in_core_deaths: int = 0  # measured: killed runs, after the agent's last sample
    double_counted: int = 0
    missing: int = 0  # bytes of runs that ended cleanly and central lacks
    central_mismatch: int = 0  # |central user totals - central ledger|
    problems: list[str] = field(default_factory=list)

    @property
    def difference(self) -> int:
        """What is unexplained: expected - counted - measured core-death loss."""
        return self.expected - self.counted - self.lost_in_core_deaths

    @property
    def exact(self) -> bool:
        return not self.problems and self.difference == 0


def run_of(runs: list[Run], node: str, at_ms: int) -> int | None:
    """Index of the run of `node` alive at at_ms."""
    for i, run in enumerate(runs):
        if run.node != node or at_ms < run.started_ms:
            continue
        if run.ended_ms is None or at_ms <= run.ended_ms:
            return i
    return None


def judge(runs: list[Run], ledger: list[LedgerRow], totals: dict[str, Bytes]) -> Verdict:
    verdict = Verdict()
    counted_by_run: dict[int, dict[str, list[int]]] = {}
    for row in ledger:
        first = run_of(runs, row.node, row.first_sample_ms)
        last = run_of(runs, row.node, row.last_sample_ms)
        if first is None or first != last:
            verdict.problems.append(
                f"{row.node} epoch {row.epoch}: samples span no single core run"
                f" ({row.first_sample_ms}..{row.last_sample_ms} ms)"
            )
            continue
        acc = counted_by_run.setdefault(first, {}).setdefault(row.user, [0, 0])
        acc[0] += row.uplink
        acc[1] += row.downlink
    for i, run in enumerate(runs):
        counted = counted_by_run.get(i, {})
        for user in sorted(set(run.final) | set(counted)):
            want = run.final.get(user, (0, 0))
            got = tuple(counted.get(user, (0, 0)))
            verdict.expected += sum(want)
            verdict.counted += sum(got)
            for direction, w, g in zip(("up", "down"), want, got, strict=True):
                where = f"{run.node} run {i} user {user} {direction}link"
                if g > w:
                    verdict.double_counted += g - w
                    verdict.problems.append(f"{where}: central {g} > core {w}")
                elif g < w and run.killed:
                    verdict.lost_in_core_deaths += w - g
                elif g < w:
                    verdict.missing += w - g
                    verdict.problems.append(f"{where}: central {g} < core {w} (run not killed)")
    ledger_totals: dict[str, list[int]] = {}
    for row in ledger:
        acc = ledger_totals.setdefault(row.user, [0, 0])
        acc[0] += row.uplink
        acc[1] += row.downlink
    for user in sorted(set(ledger_totals) | set(totals)):
        a = tuple(ledger_totals.get(user, (0, 0)))
        b = totals.get(user, (0, 0))
        if a != b:
            verdict.central_mismatch += abs(sum(a) - sum(b))
            verdict.problems.append(f"user {user}: central totals {b} != its ledger {a}")
    return verdict


def summary_line(events: int, verdict: Verdict) -> str:
    return (
        f"chaos: {events} events injected, {verdict.expected} bytes expected,"
        f" {verdict.counted} bytes counted, difference {verdict.difference}"
        f" (lost by cores dying between samples: {verdict.lost_in_core_deaths},"
        f" double-counted: {verdict.double_counted}, missing: {verdict.missing})"
    )
