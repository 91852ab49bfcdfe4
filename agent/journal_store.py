"""The journal's synchronous storage layer: every SQL statement lives here
(the enforcement and lease tables' in agent/journal_enforcement.py, mixed in).

Used only through ``Journal`` (agent/journal.py), which runs each call on a
worker thread under one lock; nothing here is thread-safe on its own.

In-memory mirrors (current epoch and baselines per engine, interned
counter-name and (user, engine, epoch) stream ids, seq marks) are changed only after the
transaction that writes them has committed, so a failed commit leaves memory
and file agreeing on the previous state.

Durability: transactions whose loss after a power cut could make us reuse a
seq or count traffic twice (samples, seq hand-out marks, desired state,
enforcement) commit with ``synchronous=FULL``: in WAL mode NORMAL does not
fsync at commit, so a power loss could roll back a sample whose seq central
already holds, and the next sample would reuse that seq for different bytes.
Acks and compaction commit with NORMAL: losing one just brings back rows
central will deduplicate, or rows that were never handed out.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from operator import itemgetter
from pathlib import Path

from edgeward.agent.deltas import CounterError, Sample, validate_sample
from edgeward.agent.journal_enforcement import EnforcementTables
from edgeward.agent.journal_records import (
    AckAheadError,
    CompactResult,
    OutboxStats,
    PendingDelta,
    StoredDesired,
    StreamKey,
)
from edgeward.agent.journal_schema import (
    JournalError,
    JournalFullError,
    open_connection,
    pack_counts,
    pack_ids,
    unpack,
)

# A Delta's fields by position (it is a NamedTuple): map() with these stays in C.
_USER, _UPLINK, _DOWNLINK = itemgetter(0), itemgetter(3), itemgetter(4)


class JournalStore(EnforcementTables):
    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._sync_full = True
        self._epochs: dict[str, str] = {}
        self._markers: dict[str, str] = {}
        for engine, epoch, marker in conn.execute("SELECT engine, epoch, marker FROM epochs"):
            self._epochs[engine], self._markers[engine] = epoch, marker
        # engine -> counter name -> interned id
        self._counters: dict[str, dict[str, int]] = {}
        names: dict[int, str] = {}
        for i, engine, name in conn.execute("SELECT id, engine, name FROM counters"):
            self._counters.setdefault(engine, {})[name] = i
            names[i] = name
        self._baselines: dict[str, dict[str, int]] = {engine: {} for engine in self._epochs}
        for engine, epoch, ids, counts in conn.execute(
            "SELECT engine, epoch, counter_ids, counts FROM baseline_sets"
        ):
            # A set is written in the transaction that makes its epoch current:
            # one of another epoch is damage, and ignoring it would read as zeros.
            if self._epochs.get(engine) != epoch:
                raise JournalError(
                    path,
                    f"damaged: baselines of {engine} are of epoch {epoch!r}, "
                    f"its current epoch is {self._epochs.get(engine)!r}",
                )
            self._baselines[engine] = _unpack_baselines(path, engine, ids, counts, names)
        # (engine, epoch) -> user -> interned stream id
        self._streams: dict[tuple[str, str], dict[str, int]] = {}
        for i, u, e, ep in conn.execute("SELECT id, user_id, engine, epoch FROM streams"):
            self._streams.setdefault((e, ep), {})[u] = i
        self._high, self._acked, self._handed_out = conn.execute(
            "SELECT high, acked, handed_out FROM seqs"
        ).fetchone()
        # Users holding a lease: a sample charges only them (most users have none).
        self._lease_users: set[str] = {u for (u,) in conn.execute("SELECT user_id FROM leases")}

    @classmethod
    def open(cls, path: str | Path) -> JournalStore:
        path = Path(path)
        conn = open_connection(path)
        try:
            return cls(path, conn)
        except sqlite3.Error as exc:
            conn.close()
            raise JournalError(path, f"unreadable: {exc}") from exc
        except BaseException:
            conn.close()  # a damaged baseline set, say: refuse without leaking the file
            raise

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _tx(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            if durable != self._sync_full:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._sync_full = durable
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
                raise JournalFullError(
                    self.path, f"disk or size limit full, nothing written: {exc}"
                ) from exc
            raise JournalError(self.path, f"write failed, nothing written: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ counters

    def current_epoch(self, engine: str) -> str | None:
        return self._epochs.get(engine)

    def epoch_marker(self, engine: str) -> str | None:
        """What the driver stored to recognise a restart of the engine across
        agent restarts (e.g. the core's start time, an interface index)."""
        return self._markers.get(engine)

    def baselines(self, engine: str, epoch: str) -> dict[str, int]:
        """Baselines to compute the next sample against: empty for a new epoch."""
        if self._epochs.get(engine) != epoch:
            return {}
        return dict(self._baselines.get(engine, {}))

    def counter_state(self, engine: str) -> tuple[str | None, str | None, dict[str, int]]:
        """(current epoch, its marker, its baselines) of an engine: what a
        sampling round reads before it computes, in one call."""
        epoch = self._epochs.get(engine)
        return epoch, self._markers.get(engine), dict(self._baselines.get(engine, {}))

    def commit_sample(
        self, sample: Sample, sampled_at_ms: int, epoch_marker: str | None = None
    ) -> tuple[int, int]:
        """Store a sample's deltas and its new baselines in one transaction,
        make ``sample.epoch`` the engine's current epoch (with
        ``epoch_marker`` when given), and charge the deltas against the
        users' quota leases. Returns the seqs given to the deltas as
        (first, last); (0, 0) when there were none."""
        engine, epoch = sample.engine, sample.epoch
        validate_sample(sample)
        new_epoch = self._epochs.get(engine) != epoch
        old = {} if new_epoch else self._baselines.get(engine, {})
        new = dict(sample.baselines)
        if 0 in new.values():
            new = {name: value for name, value in new.items() if value}
        # An idle round (nothing moved) leaves the stored set as it is.
        write_baselines = new_epoch or new != old
        try:
            counts = pack_counts(new.values()) if write_baselines else b""
        except (OverflowError, TypeError) as e:
            raise CounterError(f"a baseline of {engine} is not a uint64 byte count: {e}") from None
        marker = epoch_marker if epoch_marker is not None else ""
        if not new_epoch and epoch_marker is None:
            marker = self._markers.get(engine, "")
        known = self._counters.get(engine, {})
        new_counters: dict[str, int] = {}
        dropped_counters: list[int] = []
        # Per delta, column-wise: a sample at 10,000 users has 10,000 of them,
        # and each Python operation per delta costs ~1 ms a sample.
        deltas = sample.deltas
        users = list(map(_USER, deltas))
        streams = self._streams.get((engine, epoch), {})
        stream_ids: list[int | None] = list(map(streams.get, users))
        new_streams: dict[str, int] = {}
        first = self._high + 1
        last = first + len(deltas) - 1
        with self._tx(durable=True) as conn:

            def counter_id(name: str) -> int:
                found = new_counters.get(name)
                if found is None:
                    found = conn.execute(
                        "INSERT INTO counters (engine, name) VALUES (?, ?)", (engine, name)
                    ).lastrowid
                    assert found is not None
                    new_counters[name] = found
                return found

            if new_epoch:
                conn.execute(
                    "INSERT INTO epochs (engine, epoch, started_at_ms, marker) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (engine) DO UPDATE SET "
                    "epoch = excluded.epoch, started_at_ms = excluded.started_at_ms, "
                    "marker = excluded.marker",
                    (engine, epoch, sampled_at_ms, marker),
                )
            elif epoch_marker is not None and epoch_marker != self._markers.get(engine):
                conn.execute("UPDATE epochs SET marker = ? WHERE engine = ?", (marker, engine))
            if write_baselines:
                ids = list(map(known.get, new))
                if None in ids:  # counters this journal has not named yet
                    ids = [counter_id(n) if i is None else i for n, i in zip(new, ids, strict=True)]
                conn.execute(
                    "INSERT INTO baseline_sets (engine, epoch, counter_ids, counts) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (engine) DO UPDATE SET "
                    "epoch = excluded.epoch, counter_ids = excluded.counter_ids, "
                    "counts = excluded.counts",
                    (engine, epoch, pack_ids(ids), counts),
                )
            if new_epoch:
                # Names of the last epoch's counters (removed users) go with it.
                dropped_counters = [i for name, i in known.items() if name not in new]
                conn.executemany(
                    "DELETE FROM counters WHERE id = ?", [(i,) for i in dropped_counters]
                )
            if None in stream_ids:  # users without a stream in this epoch yet
                for at, user in enumerate(users):
                    if stream_ids[at] is None:
                        stream = new_streams.get(user)
                        if stream is None:
                            stream = conn.execute(
                                "INSERT INTO streams (user_id, engine, epoch) VALUES (?, ?, ?)",
                                (user, engine, epoch),
                            ).lastrowid
                            assert stream is not None
                            new_streams[user] = stream
                        stream_ids[at] = stream
            conn.executemany(
                "INSERT INTO outbox (seq, stream, uplink, downlink, sampled_at_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                zip(
                    range(first, last + 1),
                    stream_ids,
                    map(_UPLINK, deltas),
                    map(_DOWNLINK, deltas),
                    itertools.repeat(sampled_at_ms, len(deltas)),
                    strict=True,
                ),
            )
            charged = self._lease_users.intersection(users)
            if charged:
                charges: dict[str, int] = {}
                for delta in deltas:
                    if delta.user_id in charged:
                        charges[delta.user_id] = charges.get(delta.user_id, 0) + delta.total
                conn.executemany(
                    "UPDATE leases SET used = used + ? WHERE user_id = ?",
                    [(amount, user) for user, amount in charges.items()],
                )
            if deltas:
                conn.execute("UPDATE seqs SET high = ?", (last,))
        # Committed: now memory may follow.
        self._epochs[engine] = epoch
        self._markers[engine] = marker
        self._baselines[engine] = new
        if new_streams:
            self._streams[(engine, epoch)] = {**streams, **new_streams}
        if new_counters or dropped_counters:
            gone = set(dropped_counters)
            merged = {n: i for n, i in known.items() if i not in gone}
            merged.update(new_counters)
            self._counters[engine] = merged
        if deltas:
            self._high = last
            return first, last
        return 0, 0

    # ------------------------------------------------------------ outbox

    def pending(self, after_seq: int, limit: int) -> list[PendingDelta]:
        """Outbox rows with seq > after_seq, oldest first. Marks them handed
        out (durably, before they can reach the wire): compaction never
        merges a row central may already hold."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        rows = [
            PendingDelta(*row)
            for row in self._conn.execute(
                "SELECT o.seq, s.user_id, s.engine, s.epoch, o.uplink, o.downlink, "
                "o.sampled_at_ms FROM outbox o JOIN streams s ON s.id = o.stream "
                "WHERE o.seq > ? ORDER BY o.seq LIMIT ?",
                (after_seq, limit),
            )
        ]
        if rows and rows[-1].seq > self._handed_out:
            with self._tx(durable=True) as conn:
                conn.execute("UPDATE seqs SET handed_out = ?", (rows[-1].seq,))
            self._handed_out = rows[-1].seq
        return rows

    def ack(self, seq: int) -> int:
        """Central durably holds every seq <= ``seq``: drop those rows.
        Idempotent; an older ack is a no-op. Returns the rows dropped."""
        if seq > self._high:
            raise AckAheadError(
                self.path,
                f"central acknowledged seq {seq} but this journal never went past "
                f"{self._high} (was the journal replaced?)",
            )
        if seq <= self._acked:
            return 0
        with self._tx(durable=False) as conn:
            dropped = conn.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount
            conn.execute("UPDATE seqs SET acked = ?, handed_out = max(handed_out, ?)", (seq, seq))
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]:
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
        """Merge the outbox rows never handed out into one row per
        (user, engine, epoch). The merged row keeps the group's highest seq
        (no seq is reused or invented) and its latest sampled_at_ms; byte
        totals are unchanged. Rows already handed out are left alone: central
        may hold them, and merging would count them twice."""
        floor = max(self._handed_out, self._acked)
        before = self._count()
        with self._tx(durable=False) as conn:
            groups = conn.execute(
                "SELECT max(seq), sum(uplink), sum(downlink), max(sampled_at_ms) "
                "FROM outbox WHERE seq > ? GROUP BY stream HAVING count(*) > 1",
                (floor,),
            ).fetchall()
            if groups:
                conn.execute(
                    "DELETE FROM outbox WHERE seq > ? AND seq NOT IN "
                    "(SELECT max(seq) FROM outbox WHERE seq > ? GROUP BY stream)",
                    (floor, floor),
                )
                conn.executemany(
                    "UPDATE outbox SET uplink = ?, downlink = ?, sampled_at_ms = ? WHERE seq = ?",
                    [(up, down, at, seq) for seq, up, down, at in groups],
                )
        return CompactResult(before, self._count())

    def _count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

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

    def outbox_stats(self) -> OutboxStats:
        rows, up, down = self._conn.execute(
            "SELECT count(*), coalesce(sum(uplink), 0), coalesce(sum(downlink), 0) FROM outbox"
        ).fetchone()
        return OutboxStats(rows, up, down, self._high, self._acked, self._handed_out)

    def outbox_totals(self) -> dict[StreamKey, tuple[int, int]]:
        """(user, engine, epoch) -> (uplink, downlink) summed over the outbox."""
        return {
            (u, e, ep): (up, down)
            for u, e, ep, up, down in self._conn.execute(
                "SELECT s.user_id, s.engine, s.epoch, sum(o.uplink), sum(o.downlink) "
                "FROM outbox o JOIN streams s ON s.id = o.stream GROUP BY o.stream"
            )
        }

    # ------------------------------------------------------------ desired / applied

    def set_desired(self, revision: int, users: Mapping[str, bytes]) -> None:
        """Replace the whole desired state (a snapshot from central)."""
        _check_revision(revision)
        with self._tx(durable=True) as conn:
            _put_revision(conn, revision)
            conn.execute("DELETE FROM desired_users")
            conn.executemany(
                "INSERT INTO desired_users (user_id, spec) VALUES (?, ?)",
                [(user_id, bytes(spec)) for user_id, spec in users.items()],
            )

    def change_desired(
        self, revision: int, upserts: Mapping[str, bytes], removed: Iterable[str]
    ) -> None:
        """Apply a change: only the users it names are written."""
        _check_revision(revision)
        with self._tx(durable=True) as conn:
            _put_revision(conn, revision)
            conn.executemany("DELETE FROM desired_users WHERE user_id = ?", [(u,) for u in removed])
            conn.executemany(
                "INSERT INTO desired_users (user_id, spec) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET spec = excluded.spec",
                [(user_id, bytes(spec)) for user_id, spec in upserts.items()],
            )

    def desired(self) -> StoredDesired | None:
        row = self._conn.execute("SELECT revision, snapshot FROM desired").fetchone()
        if row is None:
            return None
        users = {u: bytes(spec) for u, spec in self._conn.execute(
            "SELECT user_id, spec FROM desired_users ORDER BY user_id"
        )}  # fmt: skip
        return StoredDesired(row[0], users, bytes(row[1]))

    def set_applied(self, engine: str, changes: Mapping[str, object | None]) -> None:
        """Record what an engine now holds per user; None removes the user."""
        encoded = [
            (u, None if s is None else json.dumps(s, sort_keys=True)) for u, s in changes.items()
        ]
        with self._tx(durable=True) as conn:
            conn.executemany(
                "INSERT INTO applied (engine, user_id, state) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET state = excluded.state",
                [(engine, u, s) for u, s in encoded if s is not None],
            )
            conn.executemany(
                "DELETE FROM applied WHERE engine = ? AND user_id = ?",
                [(engine, u) for u, s in encoded if s is None],
            )

    def applied(self, engine: str) -> dict[str, object]:
        return {
            u: json.loads(s)
            for u, s in self._conn.execute(
                "SELECT user_id, state FROM applied WHERE engine = ?", (engine,)
            )
        }


def _unpack_baselines(
    path: Path, engine: str, ids_blob: bytes, counts_blob: bytes, names: Mapping[int, str]
) -> dict[str, int]:
    """counter name -> baseline from a baseline_sets row; a torn or mismatched
    row is a damaged journal (never read as zeros: that would count again)."""
    damaged = f"damaged: baselines of {engine}"
    try:
        ids, counts = unpack(ids_blob, "q"), unpack(counts_blob, "Q")
    except (ValueError, TypeError) as e:  # TypeError: not a blob at all
        raise JournalError(path, f"{damaged}: {e}") from None
    if len(ids) != len(counts):
        raise JournalError(path, f"{damaged}: {len(ids)} counters, {len(counts)} counts")
    try:
        baselines = {names[i]: value for i, value in zip(ids, counts, strict=True)}
    except KeyError as e:
        raise JournalError(path, f"{damaged}: unknown counter {e}") from None
    if len(baselines) != len(ids):
        raise JournalError(path, f"{damaged}: a counter appears twice")
    return baselines


def _check_revision(revision: int) -> None:
    if revision < 0:
        raise ValueError(f"revision must not be negative, got {revision}")


def _put_revision(conn: sqlite3.Connection, revision: int) -> None:
    # The legacy whole-snapshot column is emptied: per-user rows are the truth now.
    conn.execute(
        "INSERT INTO desired (id, revision, snapshot) VALUES (1, ?, x'') "
        "ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, snapshot = x''",
        (revision,),
    )
