"""Usage batches on the wire: columns of fixed little-endian numbers (see node.proto).

`encode_usage(rows) -> v1.UsageBatch` on the agent, `decode_usage(batch) ->
list[UsageDelta]` on central. Both validate with the same rules, so a batch
that decodes is one that could have been encoded: seqs >= 1 and strictly
increasing, known engines, byte counts and times within 0 .. 2**63-1, string
indexes inside their tables, every column exactly `count` values long.

Why columns: betterproto2 is pure Python and spends ~25 µs per sub-message each
way; `array.frombytes`/`tobytes` move a column of 1000 numbers in microseconds.
"""

from __future__ import annotations

import functools
import operator
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, NamedTuple, overload

from edgeward.proto import v1

MAX_BATCH_DELTAS = 20_000
INT64_MAX = 2**63 - 1

# Agent engine names (agent/deltas.py) and v1.Engine numbers -> v1.Engine number.
ENGINE_NUMBERS: dict[Any, int] = {
    "proxy": int(v1.Engine.PROXY),
    "wireguard": int(v1.Engine.WIREGUARD),
    int(v1.Engine.PROXY): int(v1.Engine.PROXY),
    int(v1.Engine.WIREGUARD): int(v1.Engine.WIREGUARD),
}
_VALID_ENGINES = frozenset(ENGINE_NUMBERS.values())

# typecode per column; sizes are checked at import (they are platform C types).
_I64, _U32, _U8 = "q", "I", "B"
assert array(_I64).itemsize == 8 and array(_U32).itemsize == 4 and array(_U8).itemsize == 1
_SWAP = sys.byteorder != "little"

_seq = operator.attrgetter("seq")
_user = operator.attrgetter("user_id")
_engine = operator.attrgetter("engine")
_epoch = operator.attrgetter("epoch")
_up = operator.attrgetter("uplink")
_down = operator.attrgetter("downlink")
_at = operator.attrgetter("sampled_at_ms")


class InvalidUsageBatch(ValueError):
    """A usage batch (or the rows given to encode one) breaks the protocol."""


class UsageDelta(NamedTuple):
    """One decoded delta. Same attribute names as the agent's PendingDelta."""

    seq: int
    user_id: str
    engine: int  # v1.Engine number
    epoch: str
    uplink: int
    downlink: int
    sampled_at_ms: int


def encode_usage(deltas: Sequence[Any]) -> v1.UsageBatch:
    """Columns of `deltas` (objects with UsageDelta's attributes; engine may be
    "proxy"/"wireguard" or a v1.Engine). Raises InvalidUsageBatch on bad rows."""
    count = len(deltas)
    if count > MAX_BATCH_DELTAS:
        raise InvalidUsageBatch(
            f"usage batch has {count} deltas, more than the limit of {MAX_BATCH_DELTAS}"
        )
    users: dict[str, int] = {}
    epochs: dict[str, int] = {}
    try:
        user_index = [users.setdefault(u, len(users)) for u in map(_user, deltas)]
        epoch_index = [epochs.setdefault(e, len(epochs)) for e in map(_epoch, deltas)]
        engines = [ENGINE_NUMBERS[e] for e in map(_engine, deltas)]
    except KeyError as e:
        raise InvalidUsageBatch(f"unknown engine {e.args[0]!r}") from None
    except TypeError as e:  # an unhashable user id or epoch
        raise InvalidUsageBatch(f"usage delta field of the wrong type: {e}") from None
    if not all(isinstance(u, str) for u in users) or not all(isinstance(e, str) for e in epochs):
        raise InvalidUsageBatch("usage delta user_id and epoch must be strings")
    if "" in users:
        raise InvalidUsageBatch("usage delta with an empty user id")
    if any("\n" in u for u in users):
        raise InvalidUsageBatch("usage delta user id contains a newline")
    user_table = "\n".join(users)
    columns = {
        "seqs": _column(_I64, "seq", list(map(_seq, deltas))),
        "user_index": _column(_U32, "user index", user_index),
        "engine": _column(_U8, "engine", engines),
        "epoch_index": _column(_U32, "epoch index", epoch_index),
        "uplink": _column(_I64, "uplink", list(map(_up, deltas))),
        "downlink": _column(_I64, "downlink", list(map(_down, deltas))),
        "sampled_at_ms": _column(_I64, "sampled_at_ms", list(map(_at, deltas))),
    }
    _check_values(columns["seqs"], columns["uplink"], columns["downlink"], columns["sampled_at_ms"])
    if _SWAP:
        for column in columns.values():
            column.byteswap()
    return v1.UsageBatch(
        count=count,
        user_ids=user_table.encode(),
        epochs=list(epochs),
        **{name: column.tobytes() for name, column in columns.items()},
    )


# UsageDelta from a row tuple without a Python-level call (_make costs ~4x more).
_new_delta = functools.partial(tuple.__new__, UsageDelta)


class UsageColumns(Sequence[UsageDelta]):
    """A decoded, validated batch kept as its columns: a sequence of UsageDelta built
    only when read. Central's ingest reads the columns (no object per delta)."""

    __slots__ = (
        "downlink", "engines", "epoch_index", "epochs", "sampled_at", "seqs", "uplink",
        "user_ids", "user_index",
    )  # fmt: skip

    def __init__(
        self,
        seqs: array,
        user_index: array,
        engines: array,
        epoch_index: array,
        uplink: array,
        downlink: array,
        sampled_at: array,
        user_ids: list[str],
        epochs: list[str],
    ) -> None:
        self.seqs, self.user_index, self.engines = seqs, user_index, engines
        self.epoch_index, self.uplink, self.downlink = epoch_index, uplink, downlink
        self.sampled_at, self.user_ids, self.epochs = sampled_at, user_ids, epochs

    def __len__(self) -> int:
        return len(self.seqs)

    def __iter__(self) -> Iterator[UsageDelta]:
        return map(
            _new_delta,
            zip(
                self.seqs,
                map(self.user_ids.__getitem__, self.user_index),
                self.engines,
                map(self.epochs.__getitem__, self.epoch_index),
                self.uplink,
                self.downlink,
                self.sampled_at,
                strict=True,
            ),
        )

    @overload
    def __getitem__(self, i: int) -> UsageDelta: ...
    @overload
    def __getitem__(self, i: slice) -> list[UsageDelta]: ...
    def __getitem__(self, i: int | slice) -> UsageDelta | list[UsageDelta]:
        if isinstance(i, slice):
            return list(self)[i]
        return UsageDelta(
            self.seqs[i], self.user_ids[self.user_index[i]], self.engines[i],
            self.epochs[self.epoch_index[i]], self.uplink[i], self.downlink[i],
            self.sampled_at[i],
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UsageColumns({list(self)!r})"

    def users(self) -> set[str]:
        """The user ids the deltas name."""
        return {self.user_ids[i] for i in set(self.user_index)}

    def user_rows(self) -> Iterator[tuple[str, int, int, int, int]]:
        """(user_id, engine, uplink, downlink, sampled_at_ms) per delta."""
        return zip(
            map(self.user_ids.__getitem__, self.user_index),
            self.engines, self.uplink, self.downlink, self.sampled_at, strict=True,
        )  # fmt: skip


def decode_usage(batch: v1.UsageBatch) -> list[UsageDelta]:
    """The deltas of a batch, validated. Raises InvalidUsageBatch when malformed."""
    return list(decode_columns(batch))


def decode_columns(batch: v1.UsageBatch) -> UsageColumns:
    """decode_usage, the deltas kept as columns (see UsageColumns)."""
    count = batch.count
    if count > MAX_BATCH_DELTAS:
        raise InvalidUsageBatch(
            f"usage batch has {count} deltas, more than the limit of {MAX_BATCH_DELTAS}"
        )
    seqs = _read(batch.seqs, _I64, count, "seqs")
    user_index = _read(batch.user_index, _U32, count, "user_index")
    engines = _read(batch.engine, _U8, count, "engine")
    epoch_index = _read(batch.epoch_index, _U32, count, "epoch_index")
    uplink = _read(batch.uplink, _I64, count, "uplink")
    downlink = _read(batch.downlink, _I64, count, "downlink")
    sampled_at = _read(batch.sampled_at_ms, _I64, count, "sampled_at_ms")
    if count == 0:
        return UsageColumns(seqs, user_index, engines, epoch_index, uplink, downlink,
                            sampled_at, [], [])  # fmt: skip
    _check_values(seqs, uplink, downlink, sampled_at)
    try:
        user_ids = batch.user_ids.decode().split("\n")
    except UnicodeDecodeError:
        raise InvalidUsageBatch("usage batch user id table is not UTF-8") from None
    epochs = list(batch.epochs)
    if max(user_index) >= len(user_ids):
        raise InvalidUsageBatch(
            f"usage batch user index {max(user_index)} is outside its table of {len(user_ids)}"
        )
    if max(epoch_index) >= len(epochs):
        raise InvalidUsageBatch(
            f"usage batch epoch index {max(epoch_index)} is outside its table of {len(epochs)}"
        )
    if "" in user_ids:
        raise InvalidUsageBatch("usage batch names an empty user id")
    bad_engines = set(engines) - _VALID_ENGINES
    if bad_engines:
        raise InvalidUsageBatch(f"usage batch has unknown engine number {min(bad_engines)}")
    return UsageColumns(
        seqs, user_index, engines, epoch_index, uplink, downlink, sampled_at, user_ids, epochs
    )


def batch_users(deltas: Sequence[UsageDelta]) -> set[str]:
    """The user ids a batch's deltas name (UsageColumns or rows)."""
    if isinstance(deltas, UsageColumns):
        return deltas.users()
    return {delta[1] for delta in deltas}


def batch_seqs(deltas: Sequence[UsageDelta]) -> Sequence[int]:
    """The seqs of a batch's deltas (UsageColumns or rows)."""
    if isinstance(deltas, UsageColumns):
        return deltas.seqs
    return [delta[0] for delta in deltas]


def user_rows(deltas: Sequence[UsageDelta]) -> Iterator[tuple[str, int, int, int, int]]:
    """(user_id, engine, uplink, downlink, sampled_at_ms) per delta (UsageColumns or rows)."""
    if isinstance(deltas, UsageColumns):
        return deltas.user_rows()
    return map(_USER_ROW, deltas)


_USER_ROW = operator.itemgetter(1, 2, 4, 5, 6)


def _column(typecode: str, name: str, values: list[Any]) -> array:
    try:
        return array(typecode, values)
    except OverflowError:
        raise InvalidUsageBatch(f"usage delta {name} out of range (0 .. 2**63-1)") from None
    except TypeError as e:
        raise InvalidUsageBatch(f"usage delta {name} must be an integer: {e}") from None


def _read(data: bytes, typecode: str, count: int, name: str) -> array:
    column = array(typecode)
    if len(data) != count * column.itemsize:
        raise InvalidUsageBatch(
            f"usage batch column {name} holds {len(data)} bytes,"
            f" expected {count} x {column.itemsize}"
        )
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column


def _check_values(seqs: array, uplink: array, downlink: array, sampled_at: array) -> None:
    if not seqs:
        return
    if seqs[0] < 1:
        raise InvalidUsageBatch(f"usage delta seq must be >= 1, got {seqs[0]}")
    if not all(map(operator.lt, seqs, islice(seqs, 1, None))):
        at = next(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
        raise InvalidUsageBatch(
            f"usage delta seqs must strictly increase in a batch ({seqs[at]} after {seqs[at - 1]})"
        )
    for name, column in (("uplink", uplink), ("downlink", downlink), ("sampled_at_ms", sampled_at)):
        if min(column) < 0:
            raise InvalidUsageBatch(f"usage delta {name} must be >= 0, got {min(column)}")
