"""What the engines' sync tasks (CoreSync, WgSync) share: a desired state to
converge to, pass requests that wake the loop early, and waiting for a pass.

A pass runs when one was asked for (new desired state, a failed pass to retry),
when the drift timer is due, or when a user's expiry passed.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

import trio

from .model import DesiredState

Report = TypeVar("Report")


class PassLoop(Generic[Report]):
    def _init_passes(self, desired: DesiredState | None, drift_interval: float) -> None:
        self.desired = desired or DesiredState(revision=0)
        self.drift_interval = drift_interval
        self.last_pass: Report | None = None
        self.last_error: str | None = None
        self.passes = 0
        self._wake = trio.Event()
        self._pass_done = trio.Condition()
        self._dirty = True
        self._last_pass_at = -math.inf

    def set_desired(self, state: DesiredState) -> None:
        """Take a new desired state; a pass follows promptly."""
        self.desired = state
        self.request_pass()

    def request_pass(self) -> None:
        self._dirty = True
        self._wake.set()

    async def wait_pass(self) -> Report:
        """Wait for the next completed pass and return its report."""
        async with self._pass_done:
            await self._pass_done.wait()
        assert self.last_pass is not None
        return self.last_pass

    def _pass_due(self, now: float) -> bool:
        drift_due = now - self._last_pass_at >= self.drift_interval
        return self._dirty or drift_due or self._expiry_due()

    def _expiry_due(self) -> bool:
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less when a pass is requested."""
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()
