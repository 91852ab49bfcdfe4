"""Table tests of the pure delta computation (agent/deltas.py)."""

from __future__ import annotations

import random

import pytest

from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    ENGINE_WIREGUARD,
    UPLINK,
    CounterError,
    Delta,
    compute_deltas,
    core_restarted,
    memoized,
    next_epoch,
    parse_proxy_counter,
    parse_wg_counter,
    proxy_counter,
    proxy_resolver,
    wg_counter,
    wg_resolver,
)

A_UP = proxy_counter("a@x", UPLINK)
A_DOWN = proxy_counter("a@x", DOWNLINK)
B_UP = proxy_counter("b@x", UPLINK)
B_DOWN = proxy_counter("b@x", DOWNLINK)
GONE_UP = proxy_counter("gone@x", UPLINK)
USERS = {"a@x": "user-a", "b@x": "user-b"}


def run(baselines, readings, users=USERS):
    return compute_deltas(
        baselines, readings, engine=ENGINE_PROXY, epoch="7", resolve=proxy_resolver(users)
    )


def d(user, up, down):
    return Delta(user, ENGINE_PROXY, "7", up, down)


# (case, baselines, readings, expected deltas, expected baselines, unattributed)
CASES = [
    (
        "steady growth, uplink and downlink combined per user",
        {A_UP: 100, A_DOWN: 1000},
        {A_UP: 150, A_DOWN: 1900},
        [d("user-a", 50, 900)],
        {A_UP: 150, A_DOWN: 1900},
        {},
    ),
    (
        "new epoch: empty baselines, the first reading is the delta",
        {},
        {A_UP: 30, A_DOWN: 70, B_DOWN: 5},
        [d("user-a", 30, 70), d("user-b", 0, 5)],
        {A_UP: 30, A_DOWN: 70, B_DOWN: 5},
        {},
    ),
    (
        "lazy counters: missing counter is 0, appears later and counts in full",
        {A_UP: 10},
        {A_UP: 10, B_UP: 4},
        [d("user-b", 4, 0)],
        {A_UP: 10, B_UP: 4},
        {},
    ),
    (
        "zero deltas dropped: nothing moved, nothing produced",
        {A_UP: 10, A_DOWN: 20},
        {A_UP: 10, A_DOWN: 20},
        [],
        {A_UP: 10, A_DOWN: 20},
        {},
    ),
    (
        "zero-valued counters produce nothing and keep no baseline",
        {},
        {A_UP: 0, A_DOWN: 0},
        [],
        {},
        {},
    ),
    (
        "counter went down inside the epoch: unseen reset, count the new value from 0",
        {A_UP: 500, A_DOWN: 900},
        {A_UP: 40, A_DOWN: 950},
        [d("user-a", 40, 50)],
        {A_UP: 40, A_DOWN: 950},
        {},
    ),
    (
        "reset to exactly 0: no delta, baseline dropped",
        {A_UP: 500},
        {A_UP: 0},
        [],
        {},
        {},
    ),
    (
        "counter vanished (peer removed): reads 0, baseline dropped",
        {A_UP: 500, B_UP: 3},
        {B_UP: 3},
        [],
        {B_UP: 3},
        {},
    ),
    (
        "removed user: counter stays on the core, baseline advances, bytes unattributed",
        {GONE_UP: 100, A_UP: 1},
        {GONE_UP: 160, A_UP: 2},
        [d("user-a", 1, 0)],
        {GONE_UP: 160, A_UP: 2},
        {GONE_UP: 60},
    ),
    (
        "stats that are not user traffic are never attributed",
        {},
        {"inbound>>>vless-in>>>traffic>>>uplink": 9, A_DOWN: 1},
        [d("user-a", 0, 1)],
        {"inbound>>>vless-in>>>traffic>>>uplink": 9, A_DOWN: 1},
        {"inbound>>>vless-in>>>traffic>>>uplink": 9},
    ),
]


@pytest.mark.parametrize(
    ("baselines", "readings", "deltas", "new_baselines", "unattributed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_compute_deltas_table(baselines, readings, deltas, new_baselines, unattributed):
    before = (dict(baselines), dict(readings))
    sample = run(baselines, readings)
    assert list(sample.deltas) == deltas
    assert sample.baselines == new_baselines
    assert sample.unattributed == unattributed
    assert (baselines, readings) == before  # inputs untouched
    assert all(x.total > 0 for x in sample.deltas)


def test_two_emails_of_one_user_add_up():
    readings = {A_UP: 5, B_UP: 6, A_DOWN: 1, B_DOWN: 2}
    sample = run({A_UP: 1}, readings, users={"a@x": "user-a", "b@x": "user-a"})
    assert sample.deltas == (d("user-a", 10, 3),)


def test_sequence_of_samples_counts_every_byte_once():
    """Walk one counter through growth, a restart (new epoch) and an unseen reset:
    the sum of deltas equals the traffic that really moved."""
    resolve = proxy_resolver(USERS)
    moved = 0
    counted = 0
    baselines: dict[str, int] = {}
    epoch = next_epoch(None)
    value = 0
    # (event, bytes): "move" adds traffic, "restart" = new epoch (counter 0),
    # "reset" = counter silently back to 0 in the same epoch.
    script = [("move", 10), ("move", 0), ("move", 25), ("restart", 0), ("move", 7)]
    script += [("move", 3), ("reset", 0), ("move", 4), ("move", 1)]
    for event, amount in script:
        if event == "restart":
            epoch, baselines, value = next_epoch(epoch), {}, 0
        elif event == "reset":
            value = 0
        value += amount
        moved += amount
        sample = compute_deltas(
            baselines, {A_DOWN: value}, engine=ENGINE_PROXY, epoch=epoch, resolve=resolve
        )
        counted += sum(x.downlink for x in sample.deltas)
        assert all(x.epoch == epoch for x in sample.deltas)
        baselines = sample.baselines
    assert counted == moved == 50
    assert epoch == "2"


@pytest.mark.parametrize(
    ("baselines", "readings", "message"),
    [
        ({}, {A_UP: -1}, f"counter {A_UP!r} is negative: -1"),
        ({A_UP: -5}, {A_UP: 3}, f"baseline {A_UP!r} is negative: -5"),
        ({}, {A_UP: 1.5}, f"counter {A_UP!r} is not an integer: 1.5"),
        ({}, {A_UP: True}, f"counter {A_UP!r} is not an integer: True"),
    ],
)
def test_bad_values_refused(baselines, readings, message):
    before = (dict(baselines), dict(readings))
    with pytest.raises(CounterError) as info:
        run(baselines, readings)
    assert str(info.value) == message
    assert (baselines, readings) == before


def test_wireguard_rx_is_uplink_tx_is_downlink():
    key = "q0Vb0Zy2kO9c6n0Kz3ZlQm7C0h2a3S4d5F6g7H8j9k0="
    resolve = wg_resolver({("wg0", key): "user-w"})
    readings = {wg_counter("wg0", key, "rx"): 300, wg_counter("wg0", key, "tx"): 4000}
    readings[wg_counter("wg0", "other=", "rx")] = 9
    sample = compute_deltas(
        {wg_counter("wg0", key, "tx"): 1000},
        readings,
        engine=ENGINE_WIREGUARD,
        epoch="3",
        resolve=resolve,
    )
    assert sample.deltas == (Delta("user-w", ENGINE_WIREGUARD, "3", 300, 3000),)
    assert sample.unattributed == {wg_counter("wg0", "other=", "rx"): 9}


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("user>>>a@x>>>traffic>>>uplink", ("a@x", UPLINK)),
        ("user>>>a@x>>>traffic>>>downlink", ("a@x", DOWNLINK)),
        ("user>>>a@x>>>traffic>>>sideways", None),
        ("inbound>>>api>>>traffic>>>uplink", None),
        ("user>>>a@x>>>online", None),
    ],
)
def test_parse_proxy_counter(name, parsed):
    assert parse_proxy_counter(name) == parsed


def test_parse_wg_counter_round_trip():
    assert parse_wg_counter(wg_counter("wg1", "K=", "tx")) == ("wg1", "K=", DOWNLINK)
    assert parse_wg_counter("wg>>>wg1>>>K=>>>bytes") is None
    assert parse_wg_counter(proxy_counter("a", UPLINK)) is None


def test_epochs_and_restart_detection():
    assert [next_epoch(None), next_epoch("1"), next_epoch("41")] == ["1", "2", "42"]
    with pytest.raises(CounterError, match="epoch 'boot-3' is not one this agent made"):
        next_epoch("boot-3")
    assert core_restarted(None, 5) is False
    assert core_restarted(100, 130) is False
    assert core_restarted(100, 3) is True
    with pytest.raises(CounterError, match="uptime is negative"):
        core_restarted(1, -1)


def test_went_down_tells_a_counter_fell_or_vanished():
    resolve = proxy_resolver({"a@x": "a"})
    up, down = proxy_counter("a@x", "uplink"), proxy_counter("a@x", "downlink")
    steady = compute_deltas({up: 5}, {up: 7, down: 1}, engine="proxy", epoch="1", resolve=resolve)
    assert not steady.went_down and steady.deltas[0].total == 3
    fell = compute_deltas({up: 5}, {up: 2}, engine="proxy", epoch="1", resolve=resolve)
    assert fell.went_down and fell.deltas[0].uplink == 2  # counted from zero
    vanished = compute_deltas({up: 5, down: 9}, {up: 5}, engine="proxy", epoch="1", resolve=resolve)
    assert vanished.went_down and vanished.deltas == ()
    fresh = compute_deltas({}, {up: 5}, engine="proxy", epoch="1", resolve=resolve)
    assert not fresh.went_down


def test_memo_answers_like_its_resolver_over_many_rounds():
    """A ResolverMemo kept across rounds (as the sampler keeps one per desired
    state) gives exactly the samples the plain resolver gives, through growth,
    resets, vanished and unowned counters, and resolves each name once."""
    users = {f"u{i}@x": f"user-{i % 7}" for i in range(12)}  # some users own several emails
    names = [proxy_counter(e, way) for e in [*users, "stranger@x"] for way in (UPLINK, DOWNLINK)]
    names.append("inbound>>>api>>>traffic>>>uplink")  # not a user counter at all
    asked: list[str] = []
    plain = proxy_resolver(users)

    def counting(name):
        asked.append(name)
        return plain(name)

    memo = memoized(counting)
    assert memoized(memo) is memo
    rng = random.Random(5)
    values = dict.fromkeys(names, 0)
    baselines: dict[str, int] = {}
    for _ in range(60):
        for name in rng.sample(names, rng.randint(0, len(names))):
            values[name] = 0 if rng.random() < 0.05 else values[name] + rng.randint(0, 3) * 100
        readings = {n: v for n, v in values.items() if rng.random() < 0.9}  # some vanish
        kwargs = {"engine": ENGINE_PROXY, "epoch": "3"}
        expected = compute_deltas(baselines, readings, resolve=plain, **kwargs)
        assert compute_deltas(baselines, readings, resolve=memo, **kwargs) == expected
        assert list(expected.deltas) == sorted(expected.deltas)
        baselines = expected.baselines
    assert sorted(asked) == sorted(set(asked))
