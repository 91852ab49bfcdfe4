"""The journal on real SQLite files: samples, outbox, acks, compaction, state."""

from __future__ import annotations

import functools
import sqlite3

import pytest
import trio
import trio.testing

from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    ENGINE_WIREGUARD,
    UPLINK,
    CounterError,
    Delta,
    Sample,
    compute_deltas,
    next_epoch,
    proxy_counter,
    proxy_resolver,
)
from edgeward.agent.journal import (
    SCHEMA_VERSION,
    AckAheadError,
    EnforcementState,
    Journal,
    JournalError,
    Lease,
    LocalDecision,
    open_journal,
)
from edgeward.proto import v1

EMAILS = {f"u{i}@x": f"user-{i}" for i in range(5)}
RESOLVE = proxy_resolver(EMAILS)


def readings(step: int, users: int = 5) -> dict[str, int]:
    """Cumulative counters after `step` steps: user i moves (i+1) KB up, 2(i+1) KB down."""
    out = {}
    for i in range(users):
        out[proxy_counter(f"u{i}@x", UPLINK)] = step * (i + 1) * 1000
        out[proxy_counter(f"u{i}@x", DOWNLINK)] = step * (i + 1) * 2000
    return out


async def sample_step(journal: Journal, step: int, epoch: str = "1", at: int = 0) -> Sample:
    baselines = await journal.baselines(ENGINE_PROXY, epoch)
    sample = compute_deltas(
        baselines, readings(step), engine=ENGINE_PROXY, epoch=epoch, resolve=RESOLVE
    )
    await journal.commit_sample(sample, sampled_at_ms=at or step)
    return sample


async def test_fresh_journal_is_empty_and_created_atomically(tmp_path):
    path = tmp_path / "journal.db"
    async with open_journal(path) as journal:
        assert await journal.current_epoch(ENGINE_PROXY) is None
        assert await journal.baselines(ENGINE_PROXY, "1") == {}
        assert await journal.pending(0, 10) == []
        assert await journal.desired() is None
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.high_seq, stats.acked_seq) == (0, 0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_samples_survive_reopen(tmp_path):
    path = tmp_path / "journal.db"
    async with open_journal(path) as journal:
        first = await sample_step(journal, 1)
        second = await sample_step(journal, 3)
    assert [d.uplink for d in first.deltas] == [1000, 2000, 3000, 4000, 5000]
    assert [d.downlink for d in second.deltas] == [4000, 8000, 12000, 16000, 20000]
    async with open_journal(path) as journal:
        assert await journal.current_epoch(ENGINE_PROXY) == "1"
        assert await journal.baselines(ENGINE_PROXY, "1") == readings(3)
        rows = await journal.pending(0, 100)
        assert [r.seq for r in rows] == list(range(1, 11))
        assert {r.sampled_at_ms for r in rows[:5]} == {1}
        totals = await journal.outbox_totals()
        assert totals[("user-4", ENGINE_PROXY, "1")] == (15000, 30000)
        # nothing moved: no deltas, no seqs, baselines unchanged
        again = await sample_step(journal, 3)
        assert again.deltas == ()
        assert (await journal.outbox_stats()).high_seq == 10


async def test_new_epoch_starts_from_zero_and_drops_old_baselines(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        await sample_step(journal, 5, epoch="1")
        epoch = next_epoch(await journal.current_epoch(ENGINE_PROXY))
        assert await journal.baselines(ENGINE_PROXY, epoch) == {}
        # the restarted core has counted 1 step since its restart
        sample = await sample_step(journal, 1, epoch=epoch)
        assert sample.deltas[0] == Delta("user-0", ENGINE_PROXY, "2", 1000, 2000)
        assert await journal.current_epoch(ENGINE_PROXY) == "2"
        assert await journal.baselines(ENGINE_PROXY, "1") == {}
        assert await journal.baselines(ENGINE_PROXY, "2") == readings(1)
        totals = await journal.outbox_totals()
        assert totals[("user-0", ENGINE_PROXY, "1")] == (5000, 10000)
        assert totals[("user-0", ENGINE_PROXY, "2")] == (1000, 2000)
    with sqlite3.connect(tmp_path / "j.db") as conn:
        epochs = {r[0] for r in conn.execute("SELECT epoch FROM baseline_sets")}
    conn.close()
    assert epochs == {"2"}


async def test_engines_keep_separate_epochs_and_baselines(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        await sample_step(journal, 1, epoch="4")
        wg = Sample(
            ENGINE_WIREGUARD,
            "9",
            (Delta("user-1", ENGINE_WIREGUARD, "9", 7, 8),),
            {"wg>>>wg0>>>K=>>>rx": 7, "wg>>>wg0>>>K=>>>tx": 8},
            {},
        )
        await journal.commit_sample(wg, sampled_at_ms=5)
        assert await journal.current_epoch(ENGINE_PROXY) == "4"
        assert await journal.current_epoch(ENGINE_WIREGUARD) == "9"
        assert await journal.baselines(ENGINE_PROXY, "4") == readings(1)
        assert await journal.baselines(ENGINE_WIREGUARD, "9") == wg.baselines


async def test_ack_drops_rows_and_seqs_are_never_reused(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await sample_step(journal, 1)
        await sample_step(journal, 2)
        assert await journal.ack(3) == 3
        assert [r.seq for r in await journal.pending(0, 100)] == [4, 5, 6, 7, 8, 9, 10]
        assert await journal.ack(3) == 0  # repeated ack: no-op
        assert await journal.ack(2) == 0  # older ack: no-op
        assert await journal.ack(10) == 7
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.high_seq, stats.acked_seq) == (0, 10, 10)
    # everything acked, journal reopened: the next delta still gets seq 11
    async with open_journal(path) as journal:
        await sample_step(journal, 3)
        assert [r.seq for r in await journal.pending(10, 100)] == list(range(11, 16))


async def test_ack_beyond_head_is_refused_and_changes_nothing(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        await sample_step(journal, 1)
        with pytest.raises(AckAheadError) as info:
            await journal.ack(99)
        assert "central acknowledged seq 99 but this journal never went past 5" in str(info.value)
        assert str(tmp_path / "j.db") in str(info.value)
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.high_seq, stats.acked_seq) == (5, 5, 0)
        # the daemon's way out: jump past what central has seen
        await journal.skip_seqs_to(99)
        await journal.skip_seqs_to(50)  # never lowers
        await sample_step(journal, 2)
        assert [r.seq for r in await journal.pending(5, 100)] == list(range(100, 105))


async def test_compact_merges_unsent_rows_and_keeps_totals_exact(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        await sample_step(journal, 1)
        handed = await journal.pending(0, 3)  # seqs 1..3 may be on the wire now
        for step in range(2, 12):
            await sample_step(journal, step)
        await sample_step(journal, 1, epoch="2")  # a second epoch: kept apart
        before = await journal.outbox_totals()
        rows_before = (await journal.outbox_stats()).rows
        result = await journal.compact()
        after = await journal.outbox_totals()
        assert after == before
        assert (result.rows_before, rows_before) == (60, 60)
        # 3 handed-out rows stay as they were; the rest: one per (user, epoch)
        assert result.rows_after == 3 + 5 + 5
        rows = await journal.pending(0, 100)
        assert rows[:3] == handed
        seqs = [r.seq for r in rows]
        assert seqs == sorted(set(seqs)) and seqs[-1] == 60  # no seq invented
        assert all(r.sampled_at_ms == 11 for r in rows[3:8])  # latest sample time
        assert (await journal.compact()).rows_after == 13  # idempotent
        await sample_step(journal, 2, epoch="2")
        assert (await journal.outbox_stats()).high_seq == 65  # high-water kept


async def test_compact_never_merges_rows_handed_out_before_a_restart(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        for step in range(1, 4):
            await sample_step(journal, step)
        await journal.pending(0, 100)
    async with open_journal(path) as journal:
        assert (await journal.compact()).rows_after == 15
        assert (await journal.outbox_stats()).handed_out_seq == 15


async def test_bad_sample_refused_and_nothing_stored(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        await sample_step(journal, 1)
        stats = await journal.outbox_stats()
        bad = [
            (
                Sample(ENGINE_PROXY, "1", (Delta("u", ENGINE_PROXY, "1", 0, 0),), {}, {}),
                "delta for 'u' is negative or zero",
            ),
            (
                Sample(ENGINE_PROXY, "1", (Delta("u", ENGINE_PROXY, "1", -4, 9),), {}, {}),
                "delta for 'u' is negative or zero",
            ),
            (
                Sample(ENGINE_PROXY, "1", (Delta("u", ENGINE_WIREGUARD, "1", 1, 0),), {}, {}),
                "delta for 'u' is of wireguard/1, sample is of proxy/1",
            ),
            (Sample(ENGINE_PROXY, "1", (), {"c": -1}, {}), "baseline 'c' is not a byte count"),
        ]
        for sample, message in bad:
            with pytest.raises(CounterError, match=message):
                await journal.commit_sample(sample, sampled_at_ms=9)
        assert await journal.outbox_stats() == stats
        assert await journal.baselines(ENGINE_PROXY, "1") == readings(1)


async def test_desired_and_applied_state_round_trip(tmp_path):
    path = tmp_path / "j.db"
    snapshot = v1.DesiredSnapshot(
        revision=42,
        users=[
            v1.UserSpec(
                user_id="user-1",
                proxies=[v1.ProxyCredential(inbound_tag="vless-in", email="u1@x", secret="s")],
            )
        ],
    )
    alice, bob = (v1.UserSpec(user_id=u, expires_at_ms=1) for u in ("alice", "bob"))
    async with open_journal(path) as journal:
        await journal.set_desired(41, {"old": b"older"})
        await journal.set_desired(snapshot.revision, {"user-1": bytes(snapshot.users[0])})
        await journal.change_desired(43, {"alice": bytes(alice), "bob": bytes(bob)}, ())
        await journal.change_desired(44, {"bob": bytes(v1.UserSpec(user_id="bob"))}, ["alice"])
        await journal.set_applied(ENGINE_PROXY, {"user-1": {"email": "u1@x"}, "user-2": [1]})
        await journal.set_applied(ENGINE_PROXY, {"user-2": None})
        await journal.set_applied(ENGINE_WIREGUARD, {"user-1": {"peer": "K="}})
    async with open_journal(path) as journal:
        stored = await journal.desired()
        assert stored is not None and stored.revision == 44 and not stored.legacy_snapshot
        assert stored.users == {
            "bob": bytes(v1.UserSpec(user_id="bob")),
            "user-1": bytes(snapshot.users[0]),
        }
        assert await journal.applied(ENGINE_PROXY) == {"user-1": {"email": "u1@x"}}
        assert await journal.applied(ENGINE_WIREGUARD) == {"user-1": {"peer": "K="}}
        with pytest.raises(ValueError, match="revision must not be negative"):
            await journal.change_desired(-1, {}, ["bob"])
        assert (await journal.desired()) == stored  # nothing changed


async def test_enforcement_decisions_and_leases(tmp_path):
    path = tmp_path / "j.db"
    quota, spent = int(v1.Reason.QUOTA), int(v1.Reason.LEASE_SPENT)
    suspend = int(v1.Action.SUSPEND)
    async with open_journal(path) as journal:
        assert await journal.grant_leases([("user-0", 1, 10_000), ("user-1", 1, 500)]) == 2
        assert await journal.grant_leases([("user-0", 1, 99)]) == 0  # repeat: ignored
        await sample_step(journal, 1)  # user-0 moves 3000, user-1 6000
        leases = await journal.leases()
        assert leases["user-0"] == Lease("user-0", 1, 10_000, 3000)
        assert leases["user-1"].remaining == 0 and leases["user-1"].used == 6000
        assert "user-2" not in leases  # no lease: nothing charged
        await journal.set_enforcement(
            [EnforcementState("user-1", True, spent, 77)],
            [LocalDecision("user-1", suspend, spent, 77)],
        )
        await journal.set_enforcement([EnforcementState("user-3", True, quota, 80)])
    async with open_journal(path) as journal:
        state = await journal.enforcement()
        assert state["user-1"] == EnforcementState("user-1", True, spent, 77)
        assert state["user-3"].reason == quota
        decisions = await journal.unreported_decisions()
        assert [d for _, d in decisions] == [LocalDecision("user-1", suspend, spent, 77)]
        await journal.mark_decisions_reported(decisions[-1][0])
        assert await journal.unreported_decisions() == []
        # a newer grant replaces the lease; central granted it beyond the usage it
        # acknowledged, so the user's bytes still in the outbox are already spent
        assert await journal.grant_leases([("user-1", 2, 1_000_000)]) == 1
        assert (await journal.leases())["user-1"] == Lease("user-1", 2, 1_000_000, 6000)
        await journal.ack((await journal.outbox_stats()).high_seq)
        assert await journal.grant_leases([("user-1", 3, 1_000_000)]) == 1
        assert (await journal.leases())["user-1"] == Lease("user-1", 3, 1_000_000, 0)
        await journal.drop_leases(["user-0"])
        assert set(await journal.leases()) == {"user-1"}


async def test_concurrent_writers_are_serialised(tmp_path):
    """Many tasks write at once through the one writer; every sample lands
    once with its own contiguous seqs."""
    async with open_journal(tmp_path / "j.db") as journal:

        async def writer(engine: str, epoch: str) -> None:
            for step in range(1, 11):
                delta = Delta(f"user-{engine}", engine, epoch, step, 0)
                sample = Sample(engine, epoch, (delta,), {f"{engine}-c": step * 10}, {})
                await journal.commit_sample(sample, sampled_at_ms=step)

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(writer, f"e{i}", "1")
                nursery.start_soon(journal.pending, 0, 5)
        rows = await journal.pending(0, 1000)
        assert [r.seq for r in rows] == list(range(1, 41))
        totals = await journal.outbox_totals()
        assert totals == {(f"user-e{i}", f"e{i}", "1"): (55, 0) for i in range(4)}


async def test_closed_journal_refuses_calls(tmp_path):
    journal = await Journal.open(tmp_path / "j.db")
    await journal.aclose()
    await journal.aclose()  # idempotent
    with pytest.raises(JournalError, match="is closed"):
        await journal.pending(0, 1)


async def test_counter_names_of_a_finished_epoch_are_forgotten(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await sample_step(journal, 2, epoch="1")  # 5 users, 10 counters
        # after the restart only user 0 has moved yet
        sample = compute_deltas(
            {},
            {proxy_counter("u0@x", UPLINK): 10},
            engine=ENGINE_PROXY,
            epoch="2",
            resolve=RESOLVE,
        )
        await journal.commit_sample(sample, sampled_at_ms=3)
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM counters")]
    conn.close()
    assert names == [proxy_counter("u0@x", UPLINK)]
    async with open_journal(path) as journal:
        assert await journal.baselines(ENGINE_PROXY, "2") == {proxy_counter("u0@x", UPLINK): 10}
        # a counter that comes back in this epoch is counted from 0
        again = compute_deltas(
            await journal.baselines(ENGINE_PROXY, "2"),
            {proxy_counter("u0@x", UPLINK): 10, proxy_counter("u1@x", UPLINK): 4},
            engine=ENGINE_PROXY,
            epoch="2",
            resolve=RESOLVE,
        )
        await journal.commit_sample(again, sampled_at_ms=4)
        assert (await journal.outbox_totals())[("user-1", ENGINE_PROXY, "2")] == (4, 0)


async def test_epoch_marker_is_kept_with_its_epoch(tmp_path):
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        assert await journal.epoch_marker(ENGINE_PROXY) is None
        sample = compute_deltas({}, readings(1), engine=ENGINE_PROXY, epoch="1", resolve=RESOLVE)
        await journal.commit_sample(sample, sampled_at_ms=1, epoch_marker="start=1000")
        await sample_step(journal, 2)  # no marker given: kept
        assert await journal.epoch_marker(ENGINE_PROXY) == "start=1000"
    async with open_journal(path) as journal:
        assert await journal.epoch_marker(ENGINE_PROXY) == "start=1000"
        # a new epoch without a marker clears the old epoch's marker
        await sample_step(journal, 1, epoch="2")
        assert await journal.epoch_marker(ENGINE_PROXY) == ""
        sample = compute_deltas(
            await journal.baselines(ENGINE_PROXY, "2"),
            readings(2),
            engine=ENGINE_PROXY,
            epoch="2",
            resolve=RESOLVE,
        )
        await journal.commit_sample(sample, sampled_at_ms=3, epoch_marker="start=5000")
    async with open_journal(path) as journal:
        assert await journal.epoch_marker(ENGINE_PROXY) == "start=5000"


async def test_cancelled_commit_is_whole_or_absent(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        sample = compute_deltas({}, readings(1), engine=ENGINE_PROXY, epoch="1", resolve=RESOLVE)
        # cancelled before it reaches the writer: nothing stored
        with trio.CancelScope() as scope:
            scope.cancel()
            await journal.commit_sample(sample, sampled_at_ms=1)
        assert scope.cancelled_caught
        assert (await journal.outbox_stats()).rows == 0
        assert await journal.baselines(ENGINE_PROXY, "1") == {}

        # cancelled while its SQL runs on the worker thread: the transaction
        # still finishes, and memory follows the file
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(journal.commit_sample, sample, sampled_at_ms=1))
            await trio.testing.wait_all_tasks_blocked()  # it is waiting on its thread
            nursery.cancel_scope.cancel()
        stats = await journal.outbox_stats()
        assert (stats.rows, stats.high_seq) == (5, 5)
        assert await journal.baselines(ENGINE_PROXY, "1") == readings(1)
    async with open_journal(tmp_path / "j.db") as journal:
        assert (await journal.outbox_stats()).rows == 5


async def test_sample_mixing_known_and_new_streams_and_leases(tmp_path):
    """Deltas of users with a stream already, users without one, and a user
    twice in one sample: every row lands under its user with its seq, leases
    are charged, and the interned streams survive a reopen."""
    path = tmp_path / "j.db"
    async with open_journal(path) as journal:
        await journal.grant_leases([("user-1", 1, 10_000), ("user-9", 1, 10_000)])
        first = Sample(ENGINE_PROXY, "1", (Delta("user-1", ENGINE_PROXY, "1", 5, 0),), {}, {})
        assert await journal.commit_sample(first, sampled_at_ms=1) == (1, 1)
        mixed = (
            Delta("user-0", ENGINE_PROXY, "1", 1, 2),
            Delta("user-1", ENGINE_PROXY, "1", 3, 4),
            Delta("user-2", ENGINE_PROXY, "1", 0, 6),
            Delta("user-2", ENGINE_PROXY, "1", 7, 0),
        )
        sample = Sample(ENGINE_PROXY, "1", mixed, {}, {})
        assert await journal.commit_sample(sample, sampled_at_ms=2) == (2, 5)
        rows = [(r.seq, r.user_id, r.uplink, r.downlink, r.sampled_at_ms) for r in
                await journal.pending(0, 10)]  # fmt: skip
        assert rows == [
            (1, "user-1", 5, 0, 1),
            (2, "user-0", 1, 2, 2),
            (3, "user-1", 3, 4, 2),
            (4, "user-2", 0, 6, 2),
            (5, "user-2", 7, 0, 2),
        ]
        assert (await journal.leases())["user-1"].used == 12
        assert (await journal.leases())["user-9"].used == 0
    with sqlite3.connect(path) as conn:
        streams = conn.execute("SELECT count(*) FROM streams").fetchone()[0]
    conn.close()
    assert streams == 3
    async with open_journal(path) as journal:  # the reopened mirror reuses them
        again = Sample(ENGINE_PROXY, "1", (Delta("user-2", ENGINE_PROXY, "1", 1, 1),), {}, {})
        assert await journal.commit_sample(again, sampled_at_ms=3) == (6, 6)
        assert (await journal.outbox_totals())[("user-2", ENGINE_PROXY, "1")] == (8, 7)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM streams").fetchone()[0] == 3
    conn.close()


async def test_streams_of_a_finished_epoch_go_once_its_rows_are_acked(tmp_path):
    path = tmp_path / "j.db"

    def stream_rows() -> list[tuple[str, str]]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT user_id, epoch FROM streams ORDER BY id").fetchall()
        conn.close()
        return rows

    async with open_journal(path) as journal:
        await sample_step(journal, 1, epoch="1")
        await sample_step(journal, 1, epoch="2")
        assert len(stream_rows()) == 10
        await journal.ack(5)  # epoch 1's rows: epoch 2's still wait, nothing goes yet
        assert len(stream_rows()) == 10
        await journal.ack(10)
        assert stream_rows() == [(f"user-{i}", "2") for i in range(5)]
        await sample_step(journal, 2, epoch="2")  # the kept streams are reused
        assert stream_rows() == [(f"user-{i}", "2") for i in range(5)]
        assert {r.user_id for r in await journal.pending(10, 10)} == set(EMAILS.values())


async def test_counter_state_is_epoch_marker_and_baselines_in_one_read(tmp_path):
    async with open_journal(tmp_path / "j.db") as journal:
        assert await journal.counter_state(ENGINE_PROXY) == (None, None, {})
        sample = await sample_step(journal, 2, epoch="4")
        await journal.commit_sample(sample, sampled_at_ms=9, epoch_marker="m4")
        epoch, marker, baselines = await journal.counter_state(ENGINE_PROXY)
        assert (epoch, marker, baselines) == ("4", "m4", readings(2))
        baselines.clear()  # a copy: the journal's own is untouched
        assert await journal.baselines(ENGINE_PROXY, "4") == readings(2)
        assert await journal.counter_state(ENGINE_WIREGUARD) == (None, None, {})
