"""split_leases: pure lease sizing. The invariant is checked over random runs."""

from __future__ import annotations

import random

import pytest

from edgeward.central.leases import remaining_bytes, split_leases

NODES = ["node-a", "node-b", "node-c"]


def test_a_user_on_three_nodes_gets_equal_shares_within_the_remainder():
    grants = split_leases(1000, dict.fromkeys(NODES, 0), NODES)
    assert grants == {"node-a": 333, "node-b": 333, "node-c": 333}
    assert sum(grants.values()) <= 1000


def test_one_node_connecting_gets_only_its_share():
    assert split_leases(900, dict.fromkeys(NODES, 0), ["node-b"]) == {"node-b": 300}


def test_exhausted_lease_is_topped_up_only_from_unleased_bytes():
    # a spent its 300; b and c still hold 300 each; the user has 600 left: nothing unleased.
    held = {"node-a": 0, "node-b": 300, "node-c": 300}
    assert split_leases(600, held, ["node-a"]) == {}
    # b spends 150 and reports: remaining 450, fair share 150, b already holds 150.
    held = {"node-a": 0, "node-b": 150, "node-c": 300}
    assert split_leases(450, held, ["node-b"]) == {}
    # c spends 250: remaining 200, unleased 200-0-150-50=0 -> still nothing for anyone.
    assert split_leases(200, {"node-a": 0, "node-b": 150, "node-c": 50}, NODES) == {}


def test_quota_exhausted_means_zero_leases():
    assert split_leases(0, dict.fromkeys(NODES, 0), NODES) == {}
    assert remaining_bytes(100, 150) == 0


def test_renewal_grows_leases_but_never_shrinks_one():
    # Renewal: 4500 left; c still holds 1500 from before, a and b are topped up to 1500.
    held = {"node-a": 0, "node-b": 10, "node-c": 1500}
    assert split_leases(4500, held, NODES) == {"node-a": 1500, "node-b": 1500}
    # With 3600 left, c's 1500 exceeds the 1200 fair share: it keeps it, never shrunk.
    assert split_leases(3600, held, NODES) == {"node-a": 1200, "node-b": 900}
    small = split_leases(90, {"node-a": 0, "node-b": 0, "node-c": 80}, NODES)
    assert small == {"node-a": 10}  # fair 30, but only 10 unleased; c keeps 80


def test_refresh_of_a_node_that_does_not_serve_the_user_is_an_error():
    with pytest.raises(ValueError, match="do not serve the user: \\['node-x'\\]"):
        split_leases(100, {"node-a": 0}, ["node-x"])


def test_invariant_outstanding_never_exceeds_remaining_over_random_runs():
    rng = random.Random(6)
    for _ in range(300):
        limit = rng.randrange(0, 10_000)
        used = 0
        held = dict.fromkeys(NODES[: rng.randrange(1, 4)], 0)
        for _ in range(40):
            if rng.random() < 0.5:  # a node spends part of its lease and reports it
                node = rng.choice(list(held))
                spent = rng.randrange(0, held[node] + 1)
                held[node] -= spent
                used += spent
            elif rng.random() < 0.1:  # renewal with a larger limit
                limit += rng.randrange(0, 5_000)
            refresh = rng.sample(list(held), rng.randrange(0, len(held) + 1))
            remaining = remaining_bytes(limit, used)
            grants = split_leases(remaining, held, refresh)
            for node, size in grants.items():
                assert size > held[node], "a grant never shrinks a lease"
            held.update(grants)
            assert sum(held.values()) <= remaining
