"""Retention: the month arithmetic (pure), the [retention] config section, and the ticker
and server driving it on real storage."""

from __future__ import annotations

import asyncio
import calendar

import asyncpg
import pytest

from edgeward.central import retention
from edgeward.central.config import CentralConfig, parse_config
from edgeward.central.errors import InvalidInput
from edgeward.central.pg_retention import list_partitions
from edgeward.central.pg_storage import PgStorage
from edgeward.central.records import now_ms
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, WAIT, delta, make_pki, running_central


def ms(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, 0, 0)) * 1000


def test_months_are_calendar_months_in_utc():
    assert retention.month_start_ms(ms(2026, 12, 31, 23) + 3_599_999) == ms(2026, 12)
    assert retention.month_start_ms(ms(2027, 1)) == ms(2027, 1)
    assert retention.add_months(ms(2026, 1), -1) == ms(2025, 12)
    assert retention.add_months(ms(2026, 11), 2) == ms(2027, 1)
    assert retention.add_months(ms(2026, 3), -27) == ms(2023, 12)
    assert retention.months_ahead(ms(2026, 12, 10)) == [ms(2026, 12), ms(2027, 1)]


def test_partition_names_round_trip_and_others_are_not_months():
    assert retention.partition_name(ms(2026, 2, 14)) == "usage_hourly_p202602"
    assert retention.partition_month("usage_hourly_p202602") == ms(2026, 2)
    for other in ("usage_hourly_default", "usage_hourly_p2026", "usage_hourly_p202613", "x"):
        assert retention.partition_month(other) is None


def test_cutoffs_keep_whole_months_and_zero_keeps_forever():
    now = ms(2026, 12, 10, 12)
    assert retention.rollup_cutoff_ms(now, 3) == ms(2026, 9)
    assert retention.rollup_cutoff_ms(now, 13) == ms(2025, 11)
    assert retention.rollup_cutoff_ms(now, 0) is None
    assert retention.delta_cutoff_ms(now, 35) == now - 35 * 86_400_000
    assert retention.delta_cutoff_ms(now, 0) is None
    names = [
        "usage_hourly_default",
        "usage_hourly_p202608",
        "usage_hourly_p202609",
        "usage_hourly_p202512",
    ]
    assert retention.partitions_to_drop(names, ms(2026, 9)) == [
        "usage_hourly_p202512",
        "usage_hourly_p202608",
    ]
    # A cutoff inside a month keeps that month's partition (its older rows are deleted).
    assert retention.partitions_to_drop(names, ms(2026, 9, 15)) == [
        "usage_hourly_p202512",
        "usage_hourly_p202608",
    ]


def test_retention_config_defaults_and_values():
    defaults = parse_config("")
    assert (defaults.rollup_months, defaults.delta_days) == (13, 35)
    config = parse_config("[retention]\nrollup_months = 0\ndelta_days = 7\n")
    assert (config.rollup_months, config.delta_days) == (0, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ("rollup_months = -1", "rollup_months must be a whole number from 0"),
        ("rollup_months = 1201", "rollup_months must be a whole number from 0 .* to 1200"),
        ('delta_days = "30"', "delta_days must be a whole number"),
        ("delta_days = 1.5", "delta_days must be a whole number"),
        ("delta_days = true", "delta_days must be a whole number"),
        ("months = 3", r"unknown key\(s\) in \[retention\]: months"),
    ],
)
def test_bad_retention_settings_are_refused(text: str, message: str):
    with pytest.raises(InvalidInput, match=message):
        parse_config(f"[retention]\n{text}\n", "central.toml")


def test_the_ticker_prunes_old_rollups_and_keeps_totals(storage_backend: StorageBackend):
    old_hour = retention.add_months(retention.month_start_ms(now_ms()), -5)

    async def main():
        storage = await storage_backend.open()
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await storage.create_user("alice", actor="t", node_ids=["node-a"])
            await storage.ingest(
                "node-a", [delta(1, "alice", 5, 6, old_hour), delta(2, "alice", 1, 2, now_ms())]
            )
            ticker = asyncio.create_task(retention.retention_ticker(storage, 2, 0, interval=0.05))
            try:
                for _ in range(int(WAIT / 0.05)):  # bounded: fails rather than hangs
                    hours = [row[2] for row in await storage.hourly_usage("alice")]
                    if old_hour not in hours:
                        break
                    await asyncio.sleep(0.05)
            finally:
                ticker.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await ticker
            user = await storage.get_user("alice")
        finally:
            await storage.close()
        return hours, user

    hours, user = asyncio.run(main())
    assert len(hours) == 1 and hours[0] > old_hour
    assert (user.uplink_bytes, user.downlink_bytes, user.quota_used_bytes) == (6, 8, 14)


def test_a_pass_prunes_raw_deltas_past_delta_days_and_a_replay_adds_nothing(
    storage_backend: StorageBackend,
):
    day = retention.DAY_MS
    now = now_ms()
    old, recent = now - 40 * day, now - 2 * day

    async def main():
        storage = await storage_backend.open()
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await storage.create_user("alice", actor="t", node_ids=["node-a"])
            old_batch = [delta(seq, "alice", 3, 4, old) for seq in range(1, 6)]
            await storage.ingest("node-a", old_batch, at_ms=old)
            await storage.ingest(
                "node-a", [delta(seq, "alice", 3, 4, recent) for seq in range(6, 9)], at_ms=recent
            )
            kept_forever = await retention.retention_pass(storage, 0, 0, now)
            pruned = await retention.retention_pass(storage, 0, 35, now)
            again = await retention.retention_pass(storage, 0, 35, now)
            replay = await storage.ingest("node-a", old_batch)
            user = await storage.get_user("alice")
        finally:
            await storage.close()
        return kept_forever, pruned, again, replay, user

    kept_forever, pruned, again, replay, user = asyncio.run(main())
    assert kept_forever.deltas_deleted == 0
    assert pruned.deltas_deleted == 5  # the recent 3 stay
    assert again.deltas_deleted == 0
    assert (replay.applied, replay.duplicates) == (0, 5)
    assert (user.uplink_bytes, user.downlink_bytes) == (24, 32)


def test_central_makes_this_and_next_months_partitions_at_start(tmp_path, postgres_dsn: str):
    async def main():
        pki = make_pki(tmp_path)
        storage = await PgStorage.open(postgres_dsn)
        try:
            async with running_central(pki, storage, tmp_path / "unused"):
                conn = await asyncpg.connect(postgres_dsn)
                try:  # made before central took streams: there as soon as it is ready
                    parts = await list_partitions(conn)
                finally:
                    await conn.close()
        finally:
            await storage.close()
        return parts

    expected = [retention.partition_name(m) for m in retention.months_ahead(now_ms())]
    assert asyncio.run(main()) == sorted([*expected, "usage_hourly_default"])


def test_the_config_dataclass_defaults_match_the_documented_ones():
    assert CentralConfig().rollup_months == 13 and CentralConfig().delta_days == 35


def test_a_pass_deletes_late_rows_of_a_pruned_month_without_a_partition(postgres_dsn: str):
    """A late delta of a dropped month lands in DEFAULT; the next pass deletes it there
    rather than making the month a partition again."""
    now = ms(2026, 12, 10)

    async def main():
        storage = await PgStorage.open(postgres_dsn)
        try:
            await storage.add_node("node-a", PROXY_INBOUNDS, actor="t")
            await storage.create_user("alice", actor="t", node_ids=["node-a"])
            await storage.ingest("node-a", [delta(1, "alice", 1, 1, ms(2025, 3, 2))])
            first = await retention.retention_pass(storage, 3, 0, now)
            await storage.ingest("node-a", [delta(2, "alice", 1, 1, ms(2025, 3, 3))])  # late
            second = await retention.retention_pass(storage, 3, 0, now)
            conn = await asyncpg.connect(postgres_dsn)
            try:
                parts = await list_partitions(conn)
            finally:
                await conn.close()
            hours = await storage.hourly_usage("alice")
        finally:
            await storage.close()
        return first, second, parts, hours

    first, second, parts, hours = asyncio.run(main())
    # in DEFAULT (no partition yet): deleted; raw deltas kept (delta_days 0)
    assert first == retention.RetentionResult(retention.RollupPrune(0, 1), 0)
    assert second == retention.RetentionResult(retention.RollupPrune(0, 1), 0)
    assert parts == ["usage_hourly_default", "usage_hourly_p202612", "usage_hourly_p202701"]
    assert hours == []
