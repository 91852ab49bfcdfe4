"""Monotonic usage deltas from cumulative traffic counters (pure logic, no I/O).

The agent reads every counter with ``reset=false`` and keeps the previous
reading of each counter (its *baseline*) in the journal. A delta is the
difference between the new reading and the baseline; it is journalled together
with the new baselines in one transaction, so a crash either loses both or
keeps both and no byte is counted twice or lost.

Counters are keyed by ``(engine, epoch, counter name)``:

* engine ``"proxy"`` (Xray-core / v2ray): the core's own stat names,
  ``user>>>EMAIL>>>traffic>>>uplink`` and ``...>>>downlink``;
* engine ``"wireguard"``: ``wg>>>IFACE>>>PUBKEY>>>rx`` and ``...>>>tx`` with the
  peer's base64 public key. Seen from the server, ``rx`` is what the peer sent
  (the user's uplink) and ``tx`` what it received (the user's downlink).

An *epoch* is one lifetime of the counters: a core restart or a re-created
WireGuard interface starts every counter again from zero, and the caller
starts a new epoch. Baselines of another epoch are never subtracted from
readings of this one.

Rules (DESIGN.md section 2):

* A missing counter reads as 0: counters appear lazily at a user's first
  connection, and a removed WireGuard peer loses its counters.
* The first reading of a counter in an epoch is entirely traffic of that
  epoch, so it is the delta.
* A counter that goes *down* inside an epoch was reset without us noticing a
  new epoch (an unseen core restart, a peer removed and re-added between two
  samples). We take 0 as its new baseline and count the new value in full:
  the new value is traffic since the reset, and counting it is exact for
  everything after the reset. The alternative (skip the sample) would drop
  that traffic for good. What moved between our last sample and the reset is
  unknowable either way.
* Negative readings are refused (``CounterError``): a counter is a byte count.
* Zero deltas are not produced; baselines of zero are not kept (0 is the
  default).
* Counters no user owns (a removed user whose connections are still open,
  an email no longer in the desired state) still advance their baselines, so
  their traffic is never counted later under someone else; the bytes are
  reported back as ``unattributed`` for logs and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

ENGINE_PROXY = "proxy"
ENGINE_WIREGUARD = "wireguard"
ENGINES = (ENGINE_PROXY, ENGINE_WIREGUARD)

Direction = Literal["uplink", "downlink"]
UPLINK: Direction = "uplink"
DOWNLINK: Direction = "downlink"

SEP = ">>>"
_PROXY_DIRECTIONS: dict[str, Direction] = {"uplink": UPLINK, "downlink": DOWNLINK}
# Seen from the server: rx is what the peer sent (uplink), tx what it got.
_WG_DIRECTIONS: dict[str, Direction] = {"rx": UPLINK, "tx": DOWNLINK}


class CounterError(ValueError):
    """A counter reading that cannot be a byte count."""


@dataclass(frozen=True, slots=True)
class CounterOwner:
    """Whose traffic a counter measures, and which way."""

    user_id: str
    direction: Direction


class Delta(NamedTuple):
    """Traffic of one user on one engine in one epoch since the last sample.

    A NamedTuple, not a dataclass: a sample at 10,000 users makes 10,000 of
    them, and a frozen dataclass costs ~4x more to build."""

    user_id: str
    engine: str
    epoch: str
    uplink: int
    downlink: int

    @property
    def total(self) -> int:
        return self.uplink + self.downlink


@dataclass(frozen=True, slots=True)
class Sample:
    """The result of one sampling step.

    ``baselines`` is the complete baseline set of ``(engine, epoch)`` after
    this sample (counter name -> last reading, zeros left out); the journal
    stores it in the same transaction as ``deltas``.
    """

    engine: str
    epoch: str
    deltas: tuple[Delta, ...]
    baselines: dict[str, int]
    unattributed: dict[str, int]
    went_down: bool = False


Resolver = Callable[[str], CounterOwner | None]


# What a memo knows of a counter: (user, 0 for uplink / 1 for downlink), or None
# for a counter no user owns.
Slot = tuple[str, int] | None
_UNKNOWN: Slot = ("", -1)  # a memo miss (compared by identity)


class ResolverMemo:
    """A resolver with its answers kept, as (user, direction index) slots:
    parsing a counter name and looking up its owner costs ~2.5 us, 50 ms a sample
    at 20,000 counters, while the names change only with the desired state.
    Build a new one when that changes; it holds at most one entry per counter
    name the engine reported. Callable as a plain Resolver too."""

    __slots__ = ("_resolve", "slots")

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self.slots: dict[str, Slot] = {}  # counter name -> slot, filled by slot()

    def slot(self, name: str) -> Slot:
        owner = self._resolve(name)
        found = None if owner is None else (owner.user_id, int(owner.direction != UPLINK))
        self.slots[name] = found
        return found

    def __call__(self, name: str) -> CounterOwner | None:
        return self._resolve(name)


def memoized(resolve: Resolver) -> ResolverMemo:
    """``resolve`` with its answers kept (see ResolverMemo)."""
    return resolve if isinstance(resolve, ResolverMemo) else ResolverMemo(resolve)


def proxy_counter(email: str, direction: Direction) -> str:
    """The core's stat name of a user's uplink or downlink counter."""
    return f"user{SEP}{email}{SEP}traffic{SEP}{direction}"


def wg_counter(interface: str, public_key: str, which: Literal["rx", "tx"]) -> str:
    """Our name of a WireGuard peer's rx or tx byte counter."""
    return f"wg{SEP}{interface}{SEP}{public_key}{SEP}{which}"


def parse_proxy_counter(name: str) -> tuple[str, Direction] | None:
    """``user>>>EMAIL>>>traffic>>>uplink`` -> (EMAIL, "uplink"); other stats -> None."""
    parts = name.split(SEP)
    if len(parts) != 4 or parts[0] != "user" or parts[2] != "traffic":
        return None
    direction = _PROXY_DIRECTIONS.get(parts[3])
    return None if direction is None else (parts[1], direction)


def parse_wg_counter(name: str) -> tuple[str, str, Direction] | None:
    """``wg>>>IFACE>>>KEY>>>rx`` -> (IFACE, KEY, "uplink"); anything else -> None."""
    parts = name.split(SEP)
    if len(parts) != 4 or parts[0] != "wg":
        return None
    direction = _WG_DIRECTIONS.get(parts[3])
    return None if direction is None else (parts[1], parts[2], direction)


def proxy_resolver(user_by_email: Mapping[str, str]) -> Resolver:
    """Map core stat names to users through the core-side key, the email."""

    def resolve(name: str) -> CounterOwner | None:
        parsed = parse_proxy_counter(name)
        if parsed is None:
            return None
        user_id = user_by_email.get(parsed[0])
        return None if user_id is None else CounterOwner(user_id, parsed[1])

    return resolve


def wg_resolver(user_by_peer: Mapping[tuple[str, str], str]) -> Resolver:
    """Map WireGuard counter names to users through (interface, public key)."""

    def resolve(name: str) -> CounterOwner | None:
        parsed = parse_wg_counter(name)
        if parsed is None:
            return None
        user_id = user_by_peer.get((parsed[0], parsed[1]))
        return None if user_id is None else CounterOwner(user_id, parsed[2])

    return resolve


def _check_count(kind: str, name: str, value: object) -> int:
    # bool is an int subclass; a True byte count is a bug upstream.
    if not isinstance(value, int) or isinstance(value, bool):
        raise CounterError(f"{kind} {name!r} is not an integer: {value!r}")
    if value < 0:
        raise CounterError(f"{kind} {name!r} is negative: {value}")
    return value


def _check_counts(kind: str, counts: Mapping[str, object]) -> None:
    # The fast test first (20k counters per sample at 10k users); the slow one names the culprit.
    for name, value in counts.items():
        if type(value) is not int or value < 0:
            _check_count(kind, name, value)


def compute_deltas(
    baselines: Mapping[str, int],
    readings: Mapping[str, int],
    *,
    engine: str,
    epoch: str,
    resolve: Resolver,
) -> Sample:
    """Deltas of one engine's counters against its baselines.

    ``baselines`` must be the baselines of ``(engine, epoch)``: pass an empty
    mapping when ``epoch`` is new (the journal's ``baselines(engine, epoch)``
    does that). ``readings`` is one full reading of the engine's counters
    (counter name -> cumulative bytes). Nothing is mutated. ``Sample.went_down``
    tells that a counter fell below its baseline or vanished (for the proxy core,
    a restart its uptime did not show): a caller may then start a new epoch.
    """
    _check_counts("baseline", baselines)
    _check_counts("counter", readings)

    # This runs over every counter every round (20,000 at 10,000 users): the loop
    # does as few Python operations per counter as it can.
    new_baselines = dict(readings)
    if 0 in new_baselines.values():
        new_baselines = {name: value for name, value in readings.items() if value}
    unattributed: dict[str, int] = {}
    moved_by_user: tuple[dict[str, int], dict[str, int]] = ({}, {})  # uplink, downlink
    went_down = False
    baseline_of = baselines.get
    memo = memoized(resolve)  # a caller's memo persists; a plain resolver gets one per call
    slot_of = memo.slots.get
    # A counter in the baselines but not in the readings reads 0: it drops its
    # baseline (new_baselines), so a counter that comes back is counted from zero.
    for name, value in readings.items():
        previous = baseline_of(name, 0)
        if value == previous:
            continue
        if value < previous:
            went_down = True
            if not value:
                continue
            moved = value  # reset: count from 0
        else:
            moved = value - previous
        slot = slot_of(name, _UNKNOWN)
        if slot is _UNKNOWN:
            slot = memo.slot(name)
        if slot is None:
            unattributed[name] = moved
            continue
        user, direction = slot
        sums = moved_by_user[direction]
        sums[user] = sums.get(user, 0) + moved

    ups, downs = moved_by_user
    users = ups.keys() | downs.keys() if downs else ups.keys()
    up_of, down_of = ups.get, downs.get
    make = tuple.__new__  # what Delta(...) does, without its argument parsing
    deltas = tuple(
        [make(Delta, (u, engine, epoch, up_of(u, 0), down_of(u, 0))) for u in sorted(users)]
    )
    went_down = went_down or not baselines.keys() <= readings.keys()
    return Sample(engine, epoch, deltas, new_baselines, unattributed, went_down)


def validate_sample(sample: Sample) -> None:
    """A sample fit for the journal: its deltas positive and of its engine/epoch,
    its baselines byte counts (CounterError otherwise)."""
    engine, epoch = sample.engine, sample.epoch
    for delta in sample.deltas:
        user, delta_engine, delta_epoch, up, down = delta
        if delta_engine != engine or delta_epoch != epoch:
            raise CounterError(
                f"delta for {user!r} is of {delta_engine}/{delta_epoch}, "
                f"sample is of {engine}/{epoch}"
            )
        if up < 0 or down < 0 or not (up or down):
            raise CounterError(f"delta for {user!r} is negative or zero: {delta}")
    for name, value in sample.baselines.items():
        if type(value) is not int or value < 0:
            raise CounterError(f"baseline {name!r} is not a byte count: {value!r}")


def next_epoch(previous: str | None) -> str:
    """The next epoch id of an engine: "1", "2", ... (unique per node and engine
    as long as the journal lives; central keys usage by it, never parses it)."""
    if previous is None:
        return "1"
    try:
        return str(int(previous) + 1)
    except ValueError:
        raise CounterError(f"epoch {previous!r} is not one this agent made") from None


def core_restarted(previous_uptime_s: int | None, uptime_s: int) -> bool:
    """The proxy core restarted when its uptime (GetSysStats) went down."""
    if uptime_s < 0:
        raise CounterError(f"core uptime is negative: {uptime_s}")
    return previous_uptime_s is not None and uptime_s < previous_uptime_s
