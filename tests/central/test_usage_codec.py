"""The usage batch codec: round trips through the wire bytes, and every malformed batch
refused with a clear error (on the wire: refused by central with nothing stored)."""

from __future__ import annotations

import asyncio
import re
import struct
from pathlib import Path

import pytest
from grpclib.const import Status

from edgeward.agent.journal_records import PendingDelta
from edgeward.proto import v1
from edgeward.proto.usage_codec import (
    INT64_MAX,
    MAX_BATCH_DELTAS,
    InvalidUsageBatch,
    UsageDelta,
    batch_users,
    decode_columns,
    decode_usage,
    encode_usage,
    user_rows,
)
from tests.central.backends import StorageBackend
from tests.central.helpers import PROXY_INBOUNDS, delta, make_pki, node_stream
from tests.central.helpers import running_central as central

PROXY, WIREGUARD = int(v1.Engine.PROXY), int(v1.Engine.WIREGUARD)
NOT_INCREASING = "usage delta seqs must strictly increase in a batch"


def wire(batch: v1.UsageBatch) -> v1.UsageBatch:
    """The batch as central reads it: through a NodeMessage's bytes."""
    return v1.NodeMessage().parse(bytes(v1.NodeMessage(usage=batch))).usage


def pending() -> list[PendingDelta]:
    return [
        PendingDelta(3, "alice", "proxy", "1", 10, 20, 1_700_000_000_000),
        PendingDelta(4, "bob", "wireguard", "2", 0, 5, 1_700_000_000_001),
        PendingDelta(9, "alice", "wireguard", "2", INT64_MAX, 0, 1_700_000_000_002),  # a gap
        PendingDelta(10, "ünï@x", "proxy", "1", 1, INT64_MAX, 0),
    ]


def test_agent_rows_round_trip_through_the_wire_with_their_own_seqs():
    rows = pending()
    decoded = decode_usage(wire(encode_usage(rows)))
    assert decoded == [
        UsageDelta(3, "alice", PROXY, "1", 10, 20, 1_700_000_000_000),
        UsageDelta(4, "bob", WIREGUARD, "2", 0, 5, 1_700_000_000_001),
        UsageDelta(9, "alice", WIREGUARD, "2", INT64_MAX, 0, 1_700_000_000_002),
        UsageDelta(10, "ünï@x", PROXY, "1", 1, INT64_MAX, 0),
    ]
    # Decoded rows encode again to the same batch (v1.Engine values are accepted too).
    assert decode_usage(wire(encode_usage(decoded))) == decoded
    with_enums = [d._replace(engine=v1.Engine(d.engine)) for d in decoded]
    assert bytes(encode_usage(with_enums)) == bytes(encode_usage(rows))


def test_columns_read_as_the_same_deltas_by_index_slice_iteration_and_user():
    rows = pending()
    columns = decode_columns(wire(encode_usage(rows)))
    deltas = decode_usage(wire(encode_usage(rows)))
    assert len(columns) == 4
    assert list(columns) == deltas and columns == deltas
    assert [columns[i] for i in range(-4, 4)] == deltas + deltas
    assert columns[1:3] == deltas[1:3]
    with pytest.raises(IndexError):
        columns[4]
    assert batch_users(columns) == batch_users(deltas) == {"alice", "bob", "ünï@x"}
    assert (
        list(user_rows(columns))
        == list(user_rows(deltas))
        == [(d.user_id, d.engine, d.uplink, d.downlink, d.sampled_at_ms) for d in deltas]
    )
    assert decode_columns(wire(encode_usage([]))) == []


def test_the_string_tables_hold_each_user_and_epoch_once():
    rows = [delta(seq, f"user-{seq % 3}") for seq in range(1, 1001)]
    batch = encode_usage(rows)
    assert batch.count == 1000
    assert sorted(batch.user_ids.decode().split("\n")) == ["user-0", "user-1", "user-2"]
    assert batch.epochs == ["e1"]
    assert decode_usage(wire(batch)) == rows


def test_an_empty_batch_is_valid_and_empty():
    assert decode_usage(wire(encode_usage([]))) == []


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ([PendingDelta(1, "a", "ipsec", "1", 0, 0, 0)], "unknown engine 'ipsec'"),
        ([PendingDelta(1, "a", 0, "1", 0, 0, 0)], "unknown engine 0"),
        ([delta(2, "a"), delta(2, "a")], f"{NOT_INCREASING} (2 after 2)"),
        ([delta(5, "a"), delta(4, "a")], f"{NOT_INCREASING} (4 after 5)"),
        ([delta(0, "a")], "usage delta seq must be >= 1, got 0"),
        ([delta(1, "a", up=-1)], "usage delta uplink must be >= 0, got -1"),
        ([delta(1, "a", down=2**63)], "usage delta downlink out of range (0 .. 2**63-1)"),
        ([delta(1, "a", at_ms=-5)], "usage delta sampled_at_ms must be >= 0, got -5"),
        ([delta(1, "")], "usage delta with an empty user id"),
        ([delta(1, "a\nb")], "usage delta user id contains a newline"),
        ([delta(1, 7)], "usage delta user_id and epoch must be strings"),  # type: ignore[arg-type]
        ([delta(1, "a", up="1")], "usage delta uplink must be an integer"),  # type: ignore[arg-type]
    ],
)  # fmt: skip
def test_encode_refuses_bad_rows_with_the_reason(rows, error):
    with pytest.raises(InvalidUsageBatch) as caught:
        encode_usage(rows)
    assert str(caught.value).startswith(error)


def test_encode_refuses_more_rows_than_the_limit():
    rows = [delta(seq, "a") for seq in range(1, MAX_BATCH_DELTAS + 2)]
    with pytest.raises(InvalidUsageBatch, match=r"has 20001 deltas, more than the limit of 20000"):
        encode_usage(rows)


def good() -> v1.UsageBatch:
    return encode_usage([delta(1, "alice", 1, 2), delta(2, "bob", 3, 4)])


def i64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def u32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


MALFORMED = {
    "count larger than the columns": (
        {"count": 3},
        "usage batch column seqs holds 16 bytes, expected 3 x 8",
    ),
    "a short column": (
        {"uplink": i64(1)},
        "usage batch column uplink holds 8 bytes, expected 2 x 8",
    ),
    "a ragged column": ({"engine": b"\x01\x01\x01"}, "usage batch column engine holds 3 bytes"),
    "seqs going back": (
        {"seqs": i64(2, 1)},
        "usage delta seqs must strictly increase in a batch (1 after 2)",
    ),
    "seq zero": ({"seqs": i64(0, 1)}, "usage delta seq must be >= 1, got 0"),
    "negative bytes": ({"downlink": i64(4, -4)}, "usage delta downlink must be >= 0, got -4"),
    "user index outside its table": (
        {"user_index": u32(0, 2)},
        "usage batch user index 2 is outside its table of 2",
    ),
    "epoch index outside its table": (
        {"epoch_index": u32(0, 1)},
        "usage batch epoch index 1 is outside its table of 1",
    ),
    "engine unspecified": ({"engine": b"\x01\x00"}, "usage batch has unknown engine number 0"),
    "empty user id": ({"user_ids": b"alice\n"}, "usage batch names an empty user id"),
    "user table not UTF-8": ({"user_ids": b"\xff\nbob"}, "usage batch user id table is not UTF-8"),
    "too many deltas": (
        {"count": MAX_BATCH_DELTAS + 1},
        "usage batch has 20001 deltas, more than the limit of 20000",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_decode_refuses_a_malformed_batch_with_the_reason(case: str):
    fields, error = MALFORMED[case]
    batch = good()
    for name, value in fields.items():
        setattr(batch, name, value)
    with pytest.raises(InvalidUsageBatch) as caught:
        decode_usage(wire(batch))
    assert str(caught.value).startswith(error)
    with pytest.raises(InvalidUsageBatch, match="^" + re.escape(error)):
        decode_columns(wire(batch))


def test_central_refuses_a_malformed_batch_on_the_stream_and_stores_nothing(
    tmp_path: Path, storage_backend: StorageBackend
):
    database = storage_backend.location

    async def main():
        pki = make_pki(tmp_path)
        storage = await storage_backend.open()
        await storage.add_node("node-a", PROXY_INBOUNDS, actor="test")
        await storage.create_user("alice", actor="test", node_ids=["node-a"])
        async with (
            central(pki, storage, database) as port,
            node_stream(port, pki, pki.node("node-a")) as node,
        ):
            await node.handshake("node-a")
            acked = await node.usage([delta(1, "alice", 5, 5)])
            # A read sees what was acked (on SQLite it folds the deferred batch first).
            counted = await storage.get_user("alice")
            before = await storage_backend.dump(skip=("node_links",))
            bad = encode_usage([delta(2, "alice", 7, 7), delta(3, "alice", 9, 9)])
            bad.seqs = i64(3, 2)
            await node.send(usage=bad)
            refusal, status = await node.refusal()
        after = await storage_backend.dump(skip=("node_links",))
        user = await storage.get_user("alice")
        await storage.close()
        return acked, counted, before, after, refusal, status, user

    acked, counted, before, after, refusal, status, user = asyncio.run(main())
    assert acked == 1
    assert (counted.uplink_bytes, counted.downlink_bytes) == (5, 5)
    assert status.status == Status.INVALID_ARGUMENT
    assert refusal.message == "usage delta seqs must strictly increase in a batch (2 after 3)"
    assert before == after
    assert (user.uplink_bytes, user.downlink_bytes) == (5, 5)
