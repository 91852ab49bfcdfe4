"""The uplink against the real central in-process, over real mTLS and real SQLite files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from edgeward.agent.aio_bridge import open_island
from edgeward.agent.deltas import ENGINE_PROXY, Delta, Sample
from edgeward.agent.journal import open_journal
from edgeward.agent.node import Node
from edgeward.agent.uplink import Uplink, backoff_delay, split_address
from tests.e2e.agent_setup import ADMIN, central_call, node_config, start_central, wait_for


def sample(epoch: str, *deltas: tuple[str, int, int], baselines=None) -> Sample:
    return Sample(
        ENGINE_PROXY,
        epoch,
        tuple(Delta(u, ENGINE_PROXY, epoch, up, down) for u, up, down in deltas),
        baselines or {},
        {},
    )


def test_backoff_is_full_jitter_below_an_exponential_ceiling():
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range
        assert min(delays) < ceiling * 0.2


def test_split_address():
    assert split_address("central.example:7443") == ("central.example", 7443)
    assert split_address("[::1]:7443") == ("::1", 7443)
    with pytest.raises(ValueError, match="not host:port"):
        split_address("central.example")


@pytest.fixture
def central(tmp_path: Path):
    central = start_central(tmp_path)
    try:
        yield central
    finally:
        central.stop()


async def test_deltas_reach_central_once_and_leave_the_journal_only_after_ack(tmp_path, central):
    storage = central.storage
    await central_call(
        central, storage.create_user, "alice", actor=ADMIN, data_limit_bytes=10**9,
        node_ids=["node-a"],
    )  # fmt: skip
    await central_call(central, storage.create_user, "bob", actor=ADMIN, node_ids=["node-a"])
    config = node_config(tmp_path, central.pki, central.address)
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        # Journalled before any connection: the outbox replays on connect.
        await node.commit_sample(sample("e1", ("alice", 100, 1000)), sampled_at_ms=1)
        await node.commit_sample(sample("e1", ("alice", 5, 0), ("bob", 7, 70)), sampled_at_ms=2)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: uplink.status.acked_seq == 3, "the first acks")
            assert (await journal.outbox_stats()).rows == 0
            # The snapshot and the lease grant arrived through the node into the journal.
            assert {u.user_id for u in node.desired.users} == {"alice", "bob"}
            assert (await journal.desired()).revision == node.revision > 0
            assert set(await journal.leases()) == {"alice"}
            # More traffic while connected is sent without reconnecting.
            await node.commit_sample(sample("e1", ("bob", 1, 1)), sampled_at_ms=3)
            await wait_for(lambda: uplink.status.acked_seq == 4, "the ack of seq 4")
            # An admin change on central reaches the node as a change.
            await central_call(central, storage.create_user, "carol", actor=ADMIN,
                               node_ids=["node-a"])  # fmt: skip
            await wait_for(lambda: node.desired.user("carol") is not None, "carol's upsert")
            await central_call(central, storage.set_suspended, "bob", True, actor=ADMIN,
                               why="test")  # fmt: skip
            await wait_for(lambda: not node.explain("bob")["served"], "bob's suspension")
            assert uplink.status.sessions == 1
            nursery.cancel_scope.cancel()
    alice = await central_call(central, storage.get_user, "alice")
    bob = await central_call(central, storage.get_user, "bob")
    assert (alice.uplink_bytes, alice.downlink_bytes) == (105, 1000)
    assert (bob.uplink_bytes, bob.downlink_bytes) == (8, 71)


async def test_reconnects_after_central_restarts_and_replays_unacked(tmp_path, central):
    storage = central.storage
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    config = node_config(tmp_path, central.pki, central.address)
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island, rng=random.Random(1))
            nursery.start_soon(uplink.run)
            await node.commit_sample(sample("e1", ("alice", 10, 20)), sampled_at_ms=1)
            await wait_for(lambda: uplink.status.acked_seq == 1, "the first ack")
            await trio.to_thread.run_sync(central.stop)
            await wait_for(lambda: uplink.status.state != "connected", "the lost connection")
            # Central is away: deltas are journalled, not lost.
            await node.commit_sample(sample("e1", ("alice", 1, 2)), sampled_at_ms=2)
            await node.commit_sample(sample("e1", ("alice", 3, 4)), sampled_at_ms=3)
            await trio.sleep(0.3)
            assert (await journal.outbox_stats()).rows == 2
            await trio.to_thread.run_sync(central.start)
            await wait_for(lambda: uplink.status.acked_seq == 3, "the replay's ack")
            assert uplink.status.sessions == 2
            nursery.cancel_scope.cancel()
    alice = await central_call(central, central.storage.get_user, "alice")  # the new storage
    assert (alice.uplink_bytes, alice.downlink_bytes) == (14, 26)


async def test_certificate_due_for_renewal_is_renewed_over_the_stream_and_used_next(
    tmp_path, central
):
    import stat
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from edgeward.pki import authority
    from edgeward.pki.certs import format_serial, load_cert, load_private_key
    from tests.central.helpers import write_pair

    store = central.pki.store
    # Issued 25 of its 30 days ago: past the renewal point (2/3 of the lifetime).
    old = authority.issue_node(
        store, "node-a", datetime.now(UTC) - timedelta(days=25), timedelta(days=30)
    )
    pair = write_pair(tmp_path / "node-pki", "node", old)
    config = node_config(tmp_path, central.pki, central.address)
    config = replace(
        config,
        central=replace(config.central, cert_file=str(pair.cert), key_file=str(pair.key)),
    )
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: uplink.status.renewed_at_ms, "the renewal")
            new_cert = load_cert(pair.cert.read_bytes())
            assert new_cert.serial_number != old.serial
            assert new_cert.public_key().public_numbers() == (
                load_private_key(pair.key.read_bytes()).public_key().public_numbers()
            )
            assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
            assert pair.key.read_bytes() != old.key_pem  # a new key, made on the node
            # The old certificate is revoked: only the new one can connect now.
            authority.revoke(
                store, f"serial:{format_serial(old.serial)}", datetime.now(UTC), "test"
            )
            await trio.to_thread.run_sync(central.stop)
            await trio.to_thread.run_sync(central.start)
            await wait_for(lambda: uplink.status.sessions == 2, "a session with the new cert")
            assert uplink.status.state == "connected"
            nursery.cancel_scope.cancel()


async def test_a_change_on_another_base_reconnects_for_a_snapshot(tmp_path, central):
    from edgeward.proto import v1

    storage = central.storage
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    config = node_config(tmp_path, central.pki, central.address)
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: node.desired.user("alice"), "the first snapshot")
            # The node drifts to a revision central never issued...
            await node.apply_snapshot(v1.DesiredSnapshot(revision=999))
            # ...so central's next change does not apply on top of it: a gap.
            await central_call(central, storage.create_user, "bob", actor=ADMIN,
                               node_ids=["node-a"])  # fmt: skip
            await wait_for(lambda: uplink.status.sessions >= 2, "the reconnect")
            await wait_for(lambda: node.desired.user("bob"), "the snapshot with bob")
            assert node.desired.user("alice") is not None and node.revision < 999
            assert "reconnecting for a snapshot" in (uplink.status.last_error or "")
            nursery.cancel_scope.cancel()


async def test_a_refused_node_logs_central_s_reason_and_keeps_its_journal(tmp_path, central):
    config = node_config(tmp_path, central.pki, central.address, node_id="node-z")
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        await node.commit_sample(sample("e1", ("alice", 1, 1)), sampled_at_ms=1)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(
                lambda: "not registered with central" in (uplink.status.last_error or ""),
                "central's refusal",
            )
            assert uplink.status.sessions == 0
            assert (await journal.outbox_stats()).rows == 1  # nothing dropped
            nursery.cancel_scope.cancel()


async def test_missing_certificate_is_named_with_what_to_do(tmp_path, central):
    from dataclasses import replace

    config = node_config(tmp_path, central.pki, central.address)
    missing = tmp_path / "nowhere" / "node.crt"
    config = replace(config, central=replace(config.central, cert_file=str(missing)))
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: uplink.status.last_error, "the error")
            assert f"node certificate {missing} does not exist" in uplink.status.last_error
            assert "edgeward-agent enroll" in uplink.status.last_error
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("central_grants_others", [True, False])
async def test_leases_central_no_longer_grants_are_dropped_on_connect(
    tmp_path, central, central_grants_others
):
    from edgeward.proto import v1

    storage = central.storage
    # alice has no data limit on central (any more); the node still holds a spent lease.
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    limit = 10**6 if central_grants_others else None  # without: central sends no grant at all
    await central_call(central, storage.create_user, "bob", actor=ADMIN,
                       data_limit_bytes=limit, node_ids=["node-a"])  # fmt: skip
    config = node_config(tmp_path, central.pki, central.address)
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        snapshot = v1.DesiredSnapshot(revision=1, users=[v1.UserSpec(user_id="alice")])
        await node.apply_snapshot(snapshot)
        await node.grant_leases(v1.LeaseGrant(leases=[v1.Lease(user_id="alice", bytes=10,
                                                               lease_id=1)]))  # fmt: skip
        await node.commit_sample(sample("e1", ("alice", 20, 0)), sampled_at_ms=1)
        assert not node.explain("alice")["served"]  # lease spent
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: "alice" not in node.leases, "the stale lease dropped")
            assert set(node.leases) == ({"bob"} if central_grants_others else set())
            await wait_for(lambda: node.explain("alice")["served"], "alice served again")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("key_now", "left_over", "expected"),
    [
        # crashed before any rename: both new files complete -> the new pair
        (b"old-key", {"node.crt.new": b"new", "node.key.new": b"new-key"}, (b"new", b"new-key")),
        # crashed between the renames (the key is already new) -> finish with the cert
        (b"new-key", {"node.crt.new": b"new"}, (b"new", b"new-key")),
        # a key without its cert: the renewal never finished -> the old pair stays
        (b"old-key", {"node.key.new": b"new-key"}, (b"old", b"old-key")),
    ],
)
def test_an_interrupted_certificate_install_is_finished_or_undone(
    tmp_path, key_now, left_over, expected
):
    from edgeward.agent.pki_files import finish_pair_install

    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    cert.write_bytes(b"old")
    key.write_bytes(key_now)
    for name, data in left_over.items():
        (tmp_path / name).write_bytes(data)
    finish_pair_install(cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.crt", "node.key"]


async def test_a_replaced_journal_continues_after_central_s_seqs_and_loses_nothing(
    tmp_path, central
):
    from edgeward.proto.usage_codec import UsageDelta

    storage = central.storage
    await central_call(central, storage.create_user, "alice", actor=ADMIN, node_ids=["node-a"])
    # Central already holds seqs 1..5 of node-a (from a journal since lost).
    old = [UsageDelta(seq, "alice", 1, "e0", 10, 0, seq) for seq in range(1, 6)]
    await central_call(central, storage.ingest, "node-a", old)
    config = node_config(tmp_path, central.pki, central.address)
    async with open_journal(Path(config.state_dir) / "journal.sqlite") as journal:
        node = await Node.load(journal)
        async with open_island() as island, trio.open_nursery() as nursery:
            uplink = Uplink(node, config, island)
            nursery.start_soon(uplink.run)
            await wait_for(lambda: uplink.status.acked_seq == 5, "welcome's acked seq")
            assert (await journal.outbox_stats()).high_seq == 5  # seqs skipped to central's
            first, last = await node.commit_sample(sample("e1", ("alice", 7, 0)), sampled_at_ms=9)
            assert (first, last) == (6, 6)
            await wait_for(lambda: uplink.status.acked_seq == 6, "the new delta's ack")
            nursery.cancel_scope.cancel()
    alice = await central_call(central, storage.get_user, "alice")
    assert alice.uplink_bytes == 5 * 10 + 7  # the new delta counted, not taken as a replay
