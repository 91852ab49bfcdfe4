"""bench/run's body: every bench/*.py in turn, its output as it comes, then a table
of every ratio line each printed (lines that mention a ratio, an `N.NNx`, a p50 or
an RSS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RATIO = re.compile(r"ratio|\d\.?\d*x\b|\bRSS\b|\bp50\b", re.IGNORECASE)
TIMEOUT = 1800


def ratio_lines(output: str) -> list[str]:
    """Lines carrying a ratio; a 'ratios ...:' heading takes its indented lines along."""
    lines, under_heading = [], False
    for line in output.splitlines():
        if under_heading and line.startswith("  "):
            lines.append(line.strip())
            continue
        under_heading = line.lower().startswith("ratios")
        if RATIO.search(line) and not under_heading:
            lines.append(line.strip())
    return lines


def main(argv: list[str]) -> int:
    only = set(argv)
    # Benchmarks are the scripts with a main guard; the rest are their helper modules.
    scripts = sorted(
        p for p in BENCH.glob("*.py")
        if not p.name.startswith("_") and '__name__ == "__main__"' in p.read_text()
    )  # fmt: skip
    scripts = [p for p in scripts if not only or p.stem in only]
    results: dict[str, tuple[int, float, list[str]]] = {}
    for script in scripts:
        print(f"=== {script.name}", flush=True)
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}  # `tests.support` importable
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=BENCH.parent,
                                env=env)  # fmt: skip
        out = []
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            out.append(line)
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        results[script.stem] = (code, time.monotonic() - started, ratio_lines("".join(out)))
    print("\n=== ratios (each measured against its baseline in the same run)")
    failed = 0
    for name, (code, seconds, lines) in results.items():
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name} [{status}, {seconds:.0f} s]")
        failed += code != 0
        for line in lines or ["(no ratio printed)"]:
            print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
