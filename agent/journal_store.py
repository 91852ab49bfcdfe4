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
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import cast

from edgeward.agent.deltas import CounterError, Sample, delta_columns, validate_sample
from edgeward.agent.journal_enforcement import EnforcementTables
from edgeward.agent.journal_outbox import OutboxTables
from edgeward.agent.journal_records import StoredDesired, StreamKey
from edgeward.agent.journal_schema import (
    JournalError,
    JournalFullError,
    insert_outbox_set,
    open_connection,
    pack_counts,
    pack_ids,
    unpack,
)


class JournalStore(OutboxTables, EnforcementTables):
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
        # engine -> counter names in the order of its stored counter_ids: a sample
        # whose names are the same rewrites only the counts, in this order.
        self._stored_order: dict[str, list[str]] = {e: list(b) for e, b in self._baselines.items()}
        # (engine, epoch) -> user -> interned stream id
        self._streams: dict[tuple[str, str], dict[str, int]] = {}
        for i, u, e, ep in conn.execute("SELECT id, user_id, engine, epoch FROM streams"):
            self._streams.setdefault((e, ep), {})[u] = i
        self._stream_keys: dict[int, StreamKey] | None = None  # built when pending() needs it
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

    def checkpoint(self) -> int:
        """Fold the WAL back into the journal file (PASSIVE: never waits for a
        reader). Returns the WAL frames now in the file."""
        try:
            _, _, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"checkpoint failed: {exc}") from exc
        return max(done, 0)

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
        if not sample.checked and 0 in new.values():
            new = {name: value for name, value in new.items() if value}
        # An idle round (nothing moved) leaves the stored set as it is.
        write_baselines = new_epoch or new != old
        # The same counters as stored (the usual round): only their counts are
        # rewritten, in the stored order; the ids (160 KB at 10,000 users) stay.
        order = self._stored_order.get(engine)
        counts = b""
        same_names = (
            write_baselines and not new_epoch and order is not None and len(new) == len(old)
        )
        try:
            if same_names:
                try:  # as many names, and every stored one among them: the same names
                    counts = pack_counts(map(new.__getitem__, order))  # type: ignore[arg-type]
                except KeyError:
                    same_names = False
            if write_baselines and not same_names:
                counts = pack_counts(new.values())
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
        users, uplinks, downlinks = delta_columns(sample.deltas)
        streams = self._streams.get((engine, epoch), {})
        stream_ids: list[int | None] = list(map(streams.get, users))
        new_streams: dict[str, int] = {}
        first = self._high + 1
        last = first + len(users) - 1
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
            if same_names:
                conn.execute(
                    "UPDATE baseline_sets SET counts = ? WHERE engine = ?", (counts, engine)
                )
            elif write_baselines:
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
            try:
                if users:  # the sample's deltas: one outbox row
                    filled = cast("list[int]", stream_ids)  # every one set above
                    insert_outbox_set(conn, first, sampled_at_ms, filled, uplinks, downlinks)
            except (OverflowError, TypeError) as e:
                raise CounterError(f"a delta of {engine} is not a uint64 byte count: {e}") from None
            charged = self._lease_users.intersection(users) if self._lease_users else ()
            if charged:
                charges: dict[str, int] = {}
                for user, up, down in zip(users, uplinks, downlinks, strict=True):
                    if user in charged:
                        charges[user] = charges.get(user, 0) + up + down
                conn.executemany(
                    "UPDATE leases SET used = used + ? WHERE user_id = ?",
                    [(amount, user) for user, amount in charges.items()],
                )
            if users:
                conn.execute("UPDATE seqs SET high = ?", (last,))
        # Committed: now memory may follow.
        self._epochs[engine] = epoch
        self._markers[engine] = marker
        self._baselines[engine] = new
        if write_baselines and not same_names:
            self._stored_order[engine] = list(new)
        if new_streams:
            self._streams[(engine, epoch)] = {**streams, **new_streams}
            self._stream_keys = None
        if new_counters or dropped_counters:
            gone = set(dropped_counters)
            merged = {n: i for n, i in known.items() if i not in gone}
            merged.update(new_counters)
            self._counters[engine] = merged
        if users:
            self._high = last
            return first, last
        return 0, 0

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
