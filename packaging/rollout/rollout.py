"""Roll a new package version across a fleet in stages, stopping at the first bad node.

    packaging/rollout/rollout --package edgeward-agent_0.2.0-1_amd64.deb \\
        --previous edgeward-agent_0.1.0-1_amd64.deb --nodes nodes.txt \\
        --transport 'ssh root@{node}' --health 'edgeward node health {node} --json'

Stages: the canary node(s) first, then batches. Each node of a stage gets the
package (sent over the transport's stdin, installed with dpkg -i or rpm -U);
then every node of the stage must report healthy before the next stage starts:
connected to central, running the new version, its outbox of unsent usage
empty or shrinking. A node that does not within --timeout stops the rollout:
every node upgraded so far gets --previous back, and the exit code is 1.

The health command prints one JSON object,
`{"connected": true, "version": "0.2.0", "outbox": 12}`; `{node}` in it and in
the transport is replaced by the node's name.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class RolloutError(Exception):
    pass


# ------------------------------------------------------------------ pure logic


def plan_stages(nodes: Sequence[str], canary: int, batch: int) -> list[list[str]]:
    """The canary stage, then batches of `batch` nodes, in the given order."""
    if canary < 1 or batch < 1:
        raise RolloutError("--canary and --batch must be at least 1")
    if len(set(nodes)) != len(nodes):
        raise RolloutError("a node is listed twice")
    rest = list(nodes[canary:])
    stages = [list(nodes[:canary])] if nodes else []
    return stages + [rest[i : i + batch] for i in range(0, len(rest), batch)]


@dataclass(frozen=True)
class Health:
    connected: bool
    version: str
    outbox: int

    @classmethod
    def parse(cls, text: str) -> Health:
        try:
            data = json.loads(text)
            health = cls(data["connected"], data["version"], data["outbox"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RolloutError(f"health output is not the expected JSON: {text[:200]!r}") from exc
        ok = type(health.connected) is bool and isinstance(health.version, str)
        if not ok or type(health.outbox) is not int or health.outbox < 0:
            raise RolloutError(f"health output has a bad field: {text[:200]!r}")
        return health


def judge(samples: Sequence[Health], version: str) -> str | None:
    """None when the node is healthy on `version`, else why not (yet)."""
    if not samples:
        return "no health report yet"
    last = samples[-1]
    if not last.connected:
        return "not connected to central"
    if last.version != version:
        return f"runs version {last.version or '?'}, not {version}"
    if last.outbox == 0:
        return None
    # the outbox must drain: fewer unsent deltas than at the first connected
    # report of the new version
    first = next(s for s in samples if s.connected and s.version == version)
    if last.outbox < first.outbox:
        return None
    return f"outbox not draining ({last.outbox} unsent)"


# ------------------------------------------------------------------ drivers

# Unattended: keep an edited config and never prompt (stdin carries the
# package); allow the downgrade a rollback is, and a reinstall.
DPKG = "dpkg --force-confdef --force-confold -i"
RPM = "rpm -U --oldpackage --replacepkgs"
INSTALL = {
    ".deb": f'f=$(mktemp) && cat >"$f" && {DPKG} "$f"; rc=$?; rm -f "$f"; exit $rc',
    ".rpm": f'f=$(mktemp) && cat >"$f" && {RPM} "$f"; rc=$?; rm -f "$f"; exit $rc',
}


def fill(template: str, node: str) -> list[str]:
    return [part.replace("{node}", node) for part in shlex.split(template)]


@dataclass
class Fleet:
    """How to reach the nodes: a transport command prefix and a health command."""

    transport: str
    health: str
    log: Callable[[str], None]

    def install(self, node: str, package: Path) -> None:
        script = INSTALL.get(package.suffix)
        if script is None:
            raise RolloutError(f"{package}: not a .deb or .rpm")
        try:
            with package.open("rb") as stdin:
                done = subprocess.run(
                    [*fill(self.transport, node), "sh", "-c", script],
                    stdin=stdin,
                    capture_output=True,
                    timeout=600,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RolloutError(f"{node}: installing {package.name} failed: {exc}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
            raise RolloutError(f"{node}: installing {package.name} failed: {err[-1]}")
        self.log(f"{node}: installed {package.name}")

    def health_of(self, node: str) -> Health:
        try:
            done = subprocess.run(
                fill(self.health, node), capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RolloutError(f"{node}: health command failed: {exc}") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RolloutError(f"{node}: health command failed: {last}")
        return Health.parse(done.stdout)

    def wait_healthy(self, node: str, version: str, timeout: float, interval: float) -> str | None:
        """None once healthy; the last reason when `timeout` runs out."""
        samples: list[Health] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                samples.append(self.health_of(node))
                reason = judge(samples, version)
            except RolloutError as exc:
                reason = str(exc)
            if reason is None:
                self.log(f"{node}: healthy on {version}")
                return None
            if time.monotonic() >= deadline:
                return reason
            time.sleep(interval)


def rollout(
    fleet: Fleet,
    nodes: Sequence[str],
    package: Path,
    previous: Path,
    version: str,
    canary: int = 1,
    batch: int = 5,
    timeout: float = 300.0,
    interval: float = 5.0,
) -> bool:
    """True when every node runs `version` healthily; False after a rollback."""
    upgraded: list[str] = []
    for number, stage in enumerate(plan_stages(nodes, canary, batch)):
        name = "canary" if number == 0 else f"batch {number}"
        fleet.log(f"{name}: {', '.join(stage)}")
        try:
            for node in stage:
                upgraded.append(node)
                fleet.install(node, package)
            for node in stage:
                reason = fleet.wait_healthy(node, version, timeout, interval)
                if reason is not None:
                    raise RolloutError(f"{node}: not healthy after {timeout:g}s: {reason}")
        except RolloutError as exc:
            fleet.log(f"STOP at {name}: {exc}")
            roll_back(fleet, upgraded, previous)
            return False
    fleet.log(f"done: {len(nodes)} nodes on {version}")
    return True


def roll_back(fleet: Fleet, nodes: Sequence[str], previous: Path) -> None:
    for node in reversed(nodes):
        try:
            fleet.install(node, previous)
        except RolloutError as exc:  # keep going: every other node still gets it back
            fleet.log(f"{node}: ROLLBACK FAILED: {exc}")
    fleet.log(f"rolled back {len(nodes)} node(s) to {previous.name}")


def package_version(package: Path) -> str:
    """The upstream version (without the package release) inside a .deb or .rpm."""
    if package.suffix == ".deb":
        cmd = ["dpkg-deb", "--showformat=${Version}", "--show", str(package)]
    else:
        cmd = ["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", str(package)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RolloutError(f"{package}: cannot read its version: {done.stderr.strip()}")
    return done.stdout.strip().rsplit("-", 1)[0]  # drop the package release


def read_nodes(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="packaging/rollout/rollout",
        description=__doc__.split("\n\n")[0],
        epilog="Stages, health and rollback: packaging/rollout/README.md.",
    )
    parser.add_argument("--package", type=Path, required=True, help="the new .deb or .rpm")
    parser.add_argument("--previous", type=Path, required=True, help="package to roll back to")
    parser.add_argument("--nodes", type=Path, required=True, help="file: one node per line")
    parser.add_argument("--transport", required=True, help="command prefix reaching {node}")
    parser.add_argument("--health", required=True, help="command printing {node}'s health JSON")
    parser.add_argument("--canary", type=int, default=1, help="nodes in the first stage")
    parser.add_argument("--batch", type=int, default=5, help="nodes per later stage")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to get healthy")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between checks")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"rollout: {line}", flush=True)

    try:
        for path in (args.package, args.previous, args.nodes):
            if not path.is_file():
                raise RolloutError(f"{path}: no such file")
        nodes = read_nodes(args.nodes)
        if not nodes:
            raise RolloutError(f"{args.nodes}: lists no node")
        plan_stages(nodes, args.canary, args.batch)  # bad counts fail before any install
        version = package_version(args.package)
        fleet = Fleet(args.transport, args.health, log)
        ok = rollout(fleet, nodes, args.package, args.previous, version,
                     args.canary, args.batch, args.timeout, args.interval)  # fmt: skip
    except RolloutError as exc:
        print(f"rollout: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
