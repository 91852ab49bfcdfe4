"""Steady real traffic through the fleet's cores, with per-node pause.

Each flow is a thread fetching blobs through one node as one user with the
VLESS client. `pause(node)` returns once no connection to that node is open
(and none will open until `resume`), which is what lets a harness take an
exact, quiet reading of a core's counters before it kills the core.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from . import vless


@dataclass(frozen=True)
class Flow:
    node: str
    address: tuple[str, int]  # the node's VLESS inbound
    user: str
    uuid: str


class Traffic:
    def __init__(
        self, flows: list[Flow], target: tuple[str, int], *, seed: int = 0,
        sizes: tuple[int, int] = (64 << 10, 768 << 10), timeout: float = 5.0,
        pace: tuple[float, float] = (0.05, 0.25),
    ) -> None:  # fmt: skip
        self.flows = flows
        self.target = target
        self.sizes = sizes
        self.timeout = timeout
        self.pace = pace  # seconds between a flow's fetches (uniform): keeps a shared box usable
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._paused: set[str] = set()
        self._in_flight: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ok: Counter[str] = Counter()  # node -> completed fetches
        self.failed: Counter[str] = Counter()  # node -> refused/broken fetches
        self.received: Counter[str] = Counter()  # node -> payload bytes the clients got

    def start(self) -> None:
        for i, flow in enumerate(self.flows):
            seed = self._rng.randrange(1 << 30)
            thread = threading.Thread(
                target=self._loop, args=(flow, random.Random(seed)), name=f"flow-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _loop(self, flow: Flow, rng: random.Random) -> None:
        while not self._stop.is_set():
            with self._cond:
                while flow.node in self._paused and not self._stop.is_set():
                    self._cond.wait(0.2)
                if self._stop.is_set():
                    return
                self._in_flight[flow.node] += 1
            try:
                size = rng.randint(*self.sizes)
                got = vless.fetch(flow.address, flow.uuid, self.target, f"/blob/{size}",
                                  timeout=self.timeout)  # fmt: skip
                self.ok[flow.node] += 1
                self.received[flow.node] += got
            except (vless.NotServed, OSError):
                self.failed[flow.node] += 1
                self._stop.wait(0.2)  # a refused user or a cut link: retry soon
            finally:
                with self._cond:
                    self._in_flight[flow.node] -= 1
                    self._cond.notify_all()
            self._stop.wait(rng.uniform(*self.pace))

    def pause(self, node: str, timeout: float = 30.0) -> None:
        """No connection to node is open when this returns."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._paused.add(node)
            while self._in_flight[node]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"traffic to {node} did not drain in {timeout}s")
                self._cond.wait(left)

    def resume(self, node: str) -> None:
        with self._cond:
            self._paused.discard(node)
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise TimeoutError(f"traffic threads did not stop: {alive}")
