"""Telling connected node streams that their desired state changed.

Storage publishes a NodeEvent after each commit that changes a node's desired
state; each connected stream subscribes to its own node. The interface is
small so a PostgreSQL LISTEN/NOTIFY notifier (pg_notify.PgNotifier) replaces
LocalNotifier when several central replicas share one database: an event
carries only what a stream needs to go back to storage (the node and its new
revision) plus the enforcement commands to send at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from edgeward.proto import v1


@dataclass(frozen=True)
class NodeEvent:
    node_id: str
    revision: int
    commands: tuple[v1.Command, ...] = ()
    # Not 0: the node's streams begun before this time (ms) end, because the node
    # connected to another replica, or was revoked (revision and commands unused).
    stop_before_ms: int = 0


class Notifier(Protocol):
    def publish(self, event: NodeEvent) -> None: ...

    def subscribe(
        self, node_id: str, deliver: Callable[[NodeEvent], None]
    ) -> AbstractContextManager[None]: ...


class LocalNotifier:
    """In-process fan-out to the callbacks of the node's connected streams."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[NodeEvent], None]]] = {}

    def publish(self, event: NodeEvent) -> None:
        for deliver in list(self._subscribers.get(event.node_id, ())):
            deliver(event)

    def subscribed_nodes(self) -> list[str]:
        return sorted(self._subscribers)

    @contextmanager
    def subscribe(self, node_id: str, deliver: Callable[[NodeEvent], None]) -> Iterator[None]:
        """deliver(event) is called after each commit; it must not block."""
        self._subscribers.setdefault(node_id, []).append(deliver)
        try:
            yield
        finally:
            subscribers = self._subscribers[node_id]
            subscribers.remove(deliver)
            if not subscribers:
                del self._subscribers[node_id]
