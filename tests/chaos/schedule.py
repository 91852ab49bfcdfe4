"""A seeded, reproducible fault schedule (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = ("agent-kill", "core-restart", "central-restart", "link-cut", "link-down", "replay")


@dataclass(frozen=True)
class Fault:
    kind: str
    node: int  # 0-based node index (central-restart: ignored)
    hold: float  # seconds the fault lasts before it is healed
    gap: float  # seconds of calm traffic before the fault


def plan_faults(seed: int, count: int, nodes: int, kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    """`count` faults; every kind appears at least once when count >= len(kinds)."""
    if count < 0 or nodes < 1:
        raise ValueError(f"need count >= 0 and nodes >= 1, got count={count}, nodes={nodes}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
    rng = random.Random(seed)
    chosen = list(kinds[:count]) + [rng.choice(kinds) for _ in range(count - len(kinds))]
    rng.shuffle(chosen)
    faults = []
    for kind in chosen:
        hold = {"link-cut": (1.0, 4.0), "link-down": (1.0, 3.0), "central-restart": (0.2, 2.0)}
        low, high = hold.get(kind, (0.1, 1.5))
        faults.append(
            Fault(kind, rng.randrange(nodes), round(rng.uniform(low, high), 2),
                  round(rng.uniform(0.5, 2.0), 2))
        )  # fmt: skip
    return faults
