"""The pure placement decisions: rendezvous hashing, bounded load, route choice, wave packing."""

from __future__ import annotations

import collections
import random

from services.scheduler.placement import bounded_hrw, choose_route, hrw_order, spread
from tests.scheduler.factories import item, key

ENGINES = ["e0", "e1", "e2", "e3"]


def test_hrw_spreads_adapters_and_moves_only_a_leaving_engines_share():
    owner = {key(i): hrw_order(key(i), ENGINES)[0] for i in range(4000)}
    counts = collections.Counter(owner.values())
    assert all(800 <= counts[e] <= 1200 for e in ENGINES), counts
    after = {s: hrw_order(s, ENGINES[:3])[0] for s in owner}
    moved = {s for s in owner if after[s] != owner[s]}
    assert moved == {s for s, e in owner.items() if e == "e3"}


def test_bounded_load_takes_the_next_engine_in_hrw_order():
    s = key("x")
    first, second = hrw_order(s, ENGINES)[:2]
    loads = dict.fromkeys(ENGINES, 0.0)
    assert bounded_hrw(s, loads, 1.25) == first
    loads[first] = 10.0  # bound: 1.25 * (10 / 4 + 1) = 4.375
    assert bounded_hrw(s, loads, 1.25) == second


def test_route_choice_order():
    loads = {"a": 0.0, "b": 0.0}
    assert choose_route(key(1), loads, ["b", "gone"], "a", hot=False, load_factor=1.25).engine_id == "b"
    placed = choose_route(key(1), loads, ["gone"], None, hot=False, load_factor=1.25)
    assert placed.placed and not placed.resident
    assigned = choose_route(key(1), loads, [], "b", hot=False, load_factor=1.25)
    assert (assigned.engine_id, assigned.placed) == ("b", False)
    # A hot adapter whose only holder is within the bound stays where it is.
    calm = choose_route(key(1), {"a": 1.0, "b": 0.0}, ["a"], None, hot=True, load_factor=1.25)
    assert calm.engine_id == "a"


def test_spread_balances_bytes_and_does_not_depend_on_input_order():
    rng = random.Random(1)
    items = [item(i, size_bytes=rng.randint(1, 100) * 1000) for i in range(1000)]
    free = dict.fromkeys(ENGINES[:3], 10**9)
    plan = spread(items, free)
    placed = collections.Counter()
    for load, engine_id in plan:
        placed[engine_id] += load.size_bytes
    assert max(placed.values()) - min(placed.values()) <= 100 * 1000  # within one largest item
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert sorted((i.adapter_key, e) for i, e in spread(shuffled, free)) == sorted((i.adapter_key, e) for i, e in plan)


def test_spread_fills_the_engine_with_the_most_free_bytes_first():
    plan = spread([item(i, size_bytes=10) for i in range(4)], {"small": 15, "large": 44})
    assert collections.Counter(e for _, e in plan) == {"large": 3, "small": 1}
