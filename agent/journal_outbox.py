"""The journal's usage outbox: deltas waiting for central's acknowledgement.

One row per sample (outbox_sets, schema 5): the sample's deltas have the
consecutive seqs first_seq..last_seq, and their streams (interned user,
engine, epoch), uplinks and downlinks are packed columns. A sample at 10,000
users is then one row, not 10,000. Every set holds only seqs above the
acknowledged one: an ack that ends inside a set trims it.

Compaction merges the deltas never handed out into one per stream, each keeping
its group's highest seq and latest sample time; merged deltas whose seqs run
on with the same time (every user active in the last sample) share one set.

Mixed into JournalStore (agent/journal_store.py), whose transaction helper,
connection, seq marks and interned streams it uses; split out only to keep
that file a readable size.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path

from edgeward.agent.journal_records import (
    AckAheadError,
    CompactResult,
    OutboxStats,
    PendingDelta,
    StreamKey,
)
from edgeward.agent.journal_schema import (
    JournalError,
    OutboxRow,
    insert_outbox_runs,
    unpack,
)

_SET_COLUMNS = "first_seq, sampled_at_ms, streams, uplinks, downlinks"


@dataclass(slots=True)
class OutboxSet:
    """One outbox_sets row, unpacked."""

    first_seq: int
    sampled_at_ms: int
    streams: list[int]
    uplinks: list[int]
    downlinks: list[int]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.streams) - 1

    def rows(self, start: int = 0) -> Iterator[OutboxRow]:
        """(seq, stream, uplink, downlink, sampled_at_ms) from index `start` on."""
        n = len(self.streams)
        return zip(
            range(self.first_seq + start, self.first_seq + n),
            self.streams[start:],
            self.uplinks[start:],
            self.downlinks[start:],
            repeat(self.sampled_at_ms, n - start),
            strict=True,
        )


class OutboxTables:
    path: Path
    _conn: sqlite3.Connection
    _high: int
    _acked: int
    _handed_out: int
    # (engine, epoch) -> user -> interned stream id; the inverse cached below
    _streams: dict[tuple[str, str], dict[str, int]]
    _epochs: dict[str, str]
    _stream_keys: dict[int, StreamKey] | None

    def _tx(self, *, durable: bool) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # JournalStore's

    # ------------------------------------------------------------ reading sets

    def _sets(self, conn: sqlite3.Connection, above: int = 0) -> Iterator[OutboxSet]:
        """The sets holding any seq > `above`, oldest first; a torn one is damage
        (never read as nothing: its deltas would be lost)."""
        for first, at, streams, ups, downs in conn.execute(
            f"SELECT {_SET_COLUMNS} FROM outbox_sets WHERE last_seq > ? ORDER BY first_seq",
            (above,),
        ):
            try:
                found = OutboxSet(
                    first, at, unpack(streams, "q"), unpack(ups, "Q"), unpack(downs, "Q")
                )
            except (ValueError, TypeError) as e:
                raise JournalError(self.path, f"damaged: outbox at seq {first}: {e}") from None
            if not len(found.streams) == len(found.uplinks) == len(found.downlinks):
                raise JournalError(self.path, f"damaged: outbox at seq {first}: torn columns")
            yield found

    def _keys(self) -> dict[int, StreamKey]:
        """Interned stream id -> (user, engine, epoch)."""
        if self._stream_keys is None:
            self._stream_keys = {
                i: (user, engine, epoch)
                for (engine, epoch), by_user in self._streams.items()
                for user, i in by_user.items()
            }
        return self._stream_keys

    def _key(self, stream: int, seq: int) -> StreamKey:
        try:
            return self._keys()[stream]
        except KeyError:
            raise JournalError(
                self.path, f"damaged: outbox seq {seq} names unknown stream {stream}"
            ) from None

    # ------------------------------------------------------------ the outbox

    def pending(self, after_seq: int, limit: int) -> list[PendingDelta]:
        """Outbox deltas with seq > after_seq, oldest first. Marks them handed
        out (durably, before they can reach the wire): compaction never
        merges a delta central may already hold."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        rows: list[PendingDelta] = []
        for found in self._sets(self._conn, after_seq):
            start = max(0, after_seq + 1 - found.first_seq)
            for seq, stream, up, down, at in found.rows(start):
                rows.append(PendingDelta(seq, *self._key(stream, seq), up, down, at))
                if len(rows) == limit:
                    break
            if len(rows) == limit:
                break
        if rows and rows[-1].seq > self._handed_out:
            with self._tx(durable=True) as conn:
                conn.execute("UPDATE seqs SET handed_out = ?", (rows[-1].seq,))
            self._handed_out = rows[-1].seq
        return rows

    def ack(self, seq: int) -> int:
        """Central durably holds every seq <= ``seq``: drop those deltas.
        Idempotent; an older ack is a no-op. Returns the deltas dropped."""
        if seq > self._high:
            raise AckAheadError(
                self.path,
                f"central acknowledged seq {seq} but this journal never went past "
                f"{self._high} (was the journal replaced?)",
            )
        if seq <= self._acked:
            return 0
        with self._tx(durable=False) as conn:
            before = self._count(conn)
            conn.execute("DELETE FROM outbox_sets WHERE last_seq <= ?", (seq,))
            for found in self._sets(conn, seq):
                if found.first_seq <= seq:  # the set the ack ends in keeps its unacked part
                    conn.execute("DELETE FROM outbox_sets WHERE first_seq = ?", (found.first_seq,))
                    insert_outbox_runs(conn, found.rows(seq + 1 - found.first_seq))
                break
            dropped = before - self._count(conn)
            conn.execute("UPDATE seqs SET acked = ?, handed_out = max(handed_out, ?)", (seq, seq))
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM outbox_sets)").fetchone()[0]:
                stale = self._stale_streams()
                conn.executemany("DELETE FROM streams WHERE id = ?", [(i,) for i in stale])
            else:
                stale = []
        self._acked = seq
        self._handed_out = max(self._handed_out, seq)
        self._forget_streams(stale)
        return dropped

    def skip_seqs_to(self, seq: int) -> None:
        """Raise the seq high-water mark to ``seq`` (never lowers it): after an
        AckAheadError, new deltas must get seqs central has not seen."""
        if seq <= self._high:
            return
        with self._tx(durable=True) as conn:
            conn.execute("UPDATE seqs SET high = ?", (seq,))
        self._high = seq

    def compact(self) -> CompactResult:
        """Merge the outbox deltas never handed out into one per
        (user, engine, epoch). The merged delta keeps the group's highest seq
        (no seq is reused or invented) and its latest sampled_at_ms; byte
        totals are unchanged. Deltas already handed out are left alone:
        central may hold them, and merging would count them twice."""
        floor = max(self._handed_out, self._acked)
        with self._tx(durable=False) as conn:
            before = self._count(conn)
            sets = list(self._sets(conn, floor))
            rows: list[OutboxRow] = []
            for found in sets:
                rows.extend(found.rows(max(0, floor + 1 - found.first_seq)))
            # stream -> [highest seq, uplink, downlink, latest sampled_at_ms]
            merged: dict[int, list[int]] = {}
            for seq, stream, up, down, at in rows:
                group = merged.get(stream)
                if group is None:
                    merged[stream] = [seq, up, down, at]
                else:
                    group[0] = seq  # rows come in seq order
                    group[1] += up
                    group[2] += down
                    group[3] = max(group[3], at)
            if len(merged) < len(rows):
                conn.execute("DELETE FROM outbox_sets WHERE last_seq > ?", (floor,))
                if sets and sets[0].first_seq <= floor:  # handed out up to the floor: stays
                    insert_outbox_runs(conn, list(sets[0].rows())[: floor + 1 - sets[0].first_seq])
                insert_outbox_runs(
                    conn,
                    sorted((seq, s, up, down, at) for s, (seq, up, down, at) in merged.items()),
                )
            after = self._count(conn)
        return CompactResult(before, after)

    def _count(self, conn: sqlite3.Connection | None = None) -> int:
        return (
            (conn or self._conn)
            .execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM outbox_sets")
            .fetchone()[0]
        )

    def _stale_streams(self) -> list[int]:
        # Streams of epochs that are over; current ones stay interned.
        return [
            i
            for (e, ep), by_user in self._streams.items()
            if self._epochs.get(e) != ep
            for i in by_user.values()
        ]

    def _forget_streams(self, ids: Iterable[int]) -> None:
        gone = set(ids)
        if gone:
            kept = {
                key: {u: i for u, i in by_user.items() if i not in gone}
                for key, by_user in self._streams.items()
            }
            self._streams = {key: by_user for key, by_user in kept.items() if by_user}
            self._stream_keys = None

    def outbox_stats(self) -> OutboxStats:
        rows, up, down = self._conn.execute(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(uplink), 0), "
            "coalesce(sum(downlink), 0) FROM outbox_sets"
        ).fetchone()
        return OutboxStats(rows, up, down, self._high, self._acked, self._handed_out)

    def outbox_totals(self) -> dict[StreamKey, tuple[int, int]]:
        """(user, engine, epoch) -> (uplink, downlink) summed over the outbox."""
        keys = self._keys()
        sums: dict[StreamKey, tuple[int, int]] = {}
        for found in self._sets(self._conn):
            unknown = set(found.streams) - keys.keys()
            if unknown:  # raises, naming the first such delta
                at = min(map(found.streams.index, unknown))
                self._key(found.streams[at], found.first_seq + at)
            for stream, up, down in zip(found.streams, found.uplinks, found.downlinks, strict=True):
                key = keys[stream]
                old_up, old_down = sums.get(key, (0, 0))
                sums[key] = (old_up + up, old_down + down)
        return sums

    def _outbox_bytes(self, users: Iterable[str]) -> dict[str, int]:
        """user -> bytes (up + down) of theirs still in the outbox, for `users`."""
        users = set(users)
        wanted = {
            i: user
            for by_user in self._streams.values()
            for user, i in by_user.items()
            if user in users
        }
        totals: dict[str, int] = {}
        if not wanted:
            return totals
        for found in self._sets(self._conn):
            mine = list(map(wanted.__contains__, found.streams))
            if True not in mine:
                continue
            for stream, up, down in zip(
                compress(found.streams, mine),
                compress(found.uplinks, mine),
                compress(found.downlinks, mine),
                strict=True,
            ):
                user = wanted[stream]
                totals[user] = totals.get(user, 0) + up + down
        return totals
