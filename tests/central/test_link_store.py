"""Node connection state shared by replicas: the merge rules (pure) and the stored rows on
both backends (a later connection wins; an old replica's late 'ended' does not)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from edgeward.central.link_store import STALE_MS, flush, merge_all, merged
from edgeward.central.node_links import NodeLinks, NodeLinkState
from edgeward.proto import v1
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS

NOW = 1_800_000_000_000
HERE = NodeLinkState(connected=True, software_version="1.0", connected_since_ms=NOW - 500,
                     last_seen_ms=NOW - 100, acked_seq=7, journal_head_seq=9)  # fmt: skip
ELSEWHERE = replace(HERE, software_version="2.0", connected_since_ms=NOW - 50, last_seen_ms=NOW)


def test_a_node_connected_here_shows_this_replicas_state():
    assert merged(HERE, ELSEWHERE, NOW) is HERE


def test_a_node_connected_elsewhere_shows_the_stored_state():
    ended_here = replace(HERE, connected=False)
    assert merged(ended_here, ELSEWHERE, NOW) is ELSEWHERE
    assert merged(None, ELSEWHERE, NOW) is ELSEWHERE
    assert merged(None, None, NOW) == NodeLinkState()


def test_a_stored_connection_nobody_refreshed_counts_as_ended():
    shown = merged(None, ELSEWHERE, NOW + STALE_MS + 1)
    assert not shown.connected and shown.software_version == "2.0"


def test_what_this_replica_saw_last_wins_over_an_older_stored_row():
    older = replace(ELSEWHERE, connected=False, last_seen_ms=NOW - 10_000)
    ended_here = replace(HERE, connected=False)
    assert merged(ended_here, older, NOW) is ended_here
    assert merge_all({"a": ended_here}, {"b": older}, NOW) == {"a": ended_here, "b": older}


def test_stored_links_round_trip_and_the_newest_connection_wins(storage_backend: StorageBackend):
    async def main():
        storage = await storage_backend.open()
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            links = NodeLinks()
            links.connected("node-a", v1.Hello(software_version="1.0", journal_head_seq=9), 7)
            error = v1.ApplyError(user_id="bob", message="bad uuid")
            report = v1.AppliedReport(revision=3, users_desired=2, users_applied=1, errors=[error])
            links.applied("node-a", report)
            await flush(storage, links, "replica-1")
            first = await storage.stored_links()
            assert links.dirty == set()
            await flush(storage, links, "replica-1")  # nothing changed: nothing written
            # The node moves to replica 2 (a later connection); replica 1 then notices
            # its old stream ended: that must not hide the node connected on replica 2.
            state = links.get("node-a")
            moved = replace(state, software_version="2.0",
                            connected_since_ms=state.connected_since_ms + 1)  # fmt: skip
            await storage.save_links("replica-2", {"node-a": moved})
            links.disconnected("node-a")
            await flush(storage, links, "replica-1")
            after = await storage.stored_links()
        finally:
            await storage.close()
        return first, after

    first, after = asyncio.run(main())
    stored = first["node-a"]
    assert stored.connected and stored.software_version == "1.0"
    assert (stored.acked_seq, stored.journal_head_seq, stored.outbox_lag) == (7, 9, 2)
    assert (stored.applied_revision, stored.users_desired, stored.users_applied) == (3, 2, 1)
    assert stored.apply_errors == {"bob": "bad uuid"}
    assert after["node-a"].connected and after["node-a"].software_version == "2.0"
