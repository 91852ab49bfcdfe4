"""The hand-written QueryStats decoder equals betterproto2's, and refuses garbage."""

from __future__ import annotations

import random

import pytest

from edgeward.agent.stats_wire import StatsDecodeError, decode_query_stats
from edgeward.proto import core


def reference(data: bytes) -> dict[str, int]:
    return {s.name: s.value for s in core.QueryStatsResponse.parse(data).stat}


def test_equals_betterproto2_on_random_replies():
    rng = random.Random(7)
    for _ in range(50):
        stats = [
            core.Stat(
                name=f"u>>>ü{rng.randrange(10**6)}{'x' * rng.choice([0, 90, 200])}@{rng.random()}",
                value=rng.choice(
                    [0, 1, 127, 128, 2**31, 2**63 - 1, -1, -(2**63), rng.randrange(2**40)]
                ),
            )
            for _ in range(rng.randrange(0, 60))
        ]
        data = bytes(core.QueryStatsResponse(stat=stats))
        assert decode_query_stats(data) == reference(data)


def test_unknown_fields_are_skipped():
    # Stat with an extra fixed64 (field 3) and varint (field 4); reply with an unknown field 9.
    stat = b"\x0a\x01a" + b"\x10\x05" + b"\x19" + bytes(8) + b"\x20\x01"
    data = b"\x0a" + bytes([len(stat)]) + stat + b"\x4a\x02hi"
    assert decode_query_stats(data) == {"a": 5} == reference(data)
    # a repeated value field: the last one wins, as in every protobuf decoder
    twice = b"\x0a\x07\x0a\x01a\x10\x05\x10\x07"
    assert decode_query_stats(twice) == {"a": 7} == reference(twice)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0a\x05\x0a\x01", "truncated"),
        (b"\x0a\x02\x10\x80", "malformed varint"),
        (b"\x0a\x03\x0a\x01\xff", "not UTF-8"),
        (b"\x0b", "unsupported wire type"),
        (b"\x0a\x03\x0a\x05a", "truncated counter name"),
    ],
)
def test_malformed_replies_are_clear_errors(data: bytes, why: str):
    with pytest.raises(StatsDecodeError, match=why):
        decode_query_stats(data)
