"""compute_deltas' column path (C-level passes over slot numbers) against the
one-counter-at-a-time reference, and the DeltaColumns sequence it returns."""

from __future__ import annotations

import random

import pytest

from edgeward.agent.deltas import (
    DOWNLINK,
    ENGINE_PROXY,
    UPLINK,
    CounterError,
    Delta,
    DeltaColumns,
    Sample,
    _deltas_by_counter,
    compute_deltas,
    delta_columns,
    memoized,
    proxy_counter,
    proxy_resolver,
    validate_sample,
)


def reference(baselines, readings, owners):
    """The per-counter path, with its own memo (nothing shared with the fast one)."""
    new = {n: v for n, v in readings.items() if v}
    return _deltas_by_counter(
        baselines, readings, new, ENGINE_PROXY, "4", memoized(proxy_resolver(owners))
    )


@pytest.mark.parametrize("seed", range(8))
def test_column_path_equals_the_per_counter_reference(seed):
    """Random rounds without resets (the column path) over users with several
    emails, emails of nobody, a user added and one removed midway, few and many
    movers: the same deltas, baselines and unattributed bytes as the reference."""
    rng = random.Random(seed)
    owners = {f"e{i}@x": f"user-{rng.randrange(40):02d}" for i in range(60)}
    emails = [*owners, "stranger@x", "gone@x"]
    memo = memoized(proxy_resolver(owners))
    values: dict[str, int] = {}
    baselines: dict[str, int] = {}
    for round_ in range(40):
        if round_ == 20:  # the desired state changes: a new memo, as the sampler builds one
            owners = {**owners, "late@x": "user-00a"}
            del owners["e0@x"]
            emails.append("late@x")
            memo = memoized(proxy_resolver(owners))
        share = rng.choice((0.02, 0.3, 1.0))
        for email in emails:
            for way in (UPLINK, DOWNLINK):
                name = proxy_counter(email, way)
                if name not in values and rng.random() < 0.5:
                    continue  # counters appear lazily
                if rng.random() < share:
                    values[name] = values.get(name, 0) + rng.randint(0, 5) * 1000
                else:
                    values.setdefault(name, 0)
        readings = dict(values)
        if round_ % 7 == 6:  # a counter vanishes for a round (a peer removed, say)
            del readings[rng.choice(sorted(readings))]
        fast = compute_deltas(baselines, readings, engine=ENGINE_PROXY, epoch="4", resolve=memo)
        trusted = compute_deltas(
            baselines,
            readings,
            engine=ENGINE_PROXY,
            epoch="4",
            resolve=memo,
            baselines_checked=True,  # the journal's way: zeros never kept
        )
        slow = reference(baselines, readings, owners)
        for sample in (fast, trusted):
            assert list(sample.deltas) == list(slow.deltas)
            assert (sample.baselines, sample.unattributed) == (slow.baselines, slow.unattributed)
            assert sample.went_down == slow.went_down
        assert fast.went_down == (round_ % 7 == 6 and not readings.keys() >= baselines.keys())
        assert list(fast.deltas) == sorted(fast.deltas)
        assert all(x.total > 0 for x in fast.deltas)
        baselines = fast.baselines


def test_a_counter_going_down_takes_the_reference_path_and_counts_from_zero():
    owners = {"a@x": "user-a", "b@x": "user-b"}
    a_up, b_up = proxy_counter("a@x", UPLINK), proxy_counter("b@x", UPLINK)
    sample = compute_deltas(
        {a_up: 500, b_up: 10},
        {a_up: 70, b_up: 15},
        engine=ENGINE_PROXY,
        epoch="4",
        resolve=proxy_resolver(owners),
    )
    assert sample.went_down
    assert list(sample.deltas) == [
        Delta("user-a", ENGINE_PROXY, "4", 70, 0),
        Delta("user-b", ENGINE_PROXY, "4", 5, 0),
    ]


def test_delta_columns_read_like_a_tuple_of_deltas():
    cols = DeltaColumns(ENGINE_PROXY, "4", ["u1", "u2"], [5, 0], [1, 9])
    rows = (Delta("u1", ENGINE_PROXY, "4", 5, 1), Delta("u2", ENGINE_PROXY, "4", 0, 9))
    assert cols == rows and list(cols) == list(rows) and len(cols) == 2
    assert cols[1] == rows[1] and cols[-1].total == 9 and cols[:1] == rows[:1]
    assert cols != rows[:1] and cols != "u1u2"
    assert delta_columns(cols) == (["u1", "u2"], [5, 0], [1, 9])
    assert delta_columns(rows) == (["u1", "u2"], [5, 0], [1, 9])
    with pytest.raises(ValueError, match="different lengths"):
        DeltaColumns(ENGINE_PROXY, "4", ["u1"], [1, 2], [3])


@pytest.mark.parametrize(
    ("deltas", "error"),
    [
        (
            DeltaColumns("wireguard", "4", ["u"], [1], [1]),
            "is of wireguard/4, sample is of proxy/4",
        ),
        (
            DeltaColumns(ENGINE_PROXY, "4", ["u", "v"], [1, 0], [1, 0]),
            "delta for 'v' is negative or zero",
        ),
        (DeltaColumns(ENGINE_PROXY, "4", ["u"], [-3], [9]), "delta for 'u' is negative or zero"),
        (DeltaColumns(ENGINE_PROXY, "4", ["u"], [True], [0]), "delta for 'u' is negative or zero"),
        (DeltaColumns(ENGINE_PROXY, "4", ["u"], [1.5], [0]), "delta for 'u' is negative or zero"),
    ],
)
def test_validate_sample_names_the_bad_delta_in_columns(deltas, error):
    with pytest.raises(CounterError, match=error):
        validate_sample(Sample(ENGINE_PROXY, "4", deltas, {}, {}))


def test_validate_sample_refuses_a_bad_baseline_by_name():
    good = DeltaColumns(ENGINE_PROXY, "4", ["u"], [1], [0])
    validate_sample(Sample(ENGINE_PROXY, "4", good, {"c": 1}, {}))
    for bad in (-1, True, 2.0):
        with pytest.raises(CounterError, match="baseline 'c' is not a byte count"):
            validate_sample(Sample(ENGINE_PROXY, "4", good, {"ok": 3, "c": bad}, {}))
