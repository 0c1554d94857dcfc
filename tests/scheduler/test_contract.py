"""The scheduler contract, run on the in-memory and the Redis backend alike."""

from __future__ import annotations

import random
import threading
import time

import pytest

from mint.errors import Code, MintError
from services.scheduler import EngineLoad
from tests.scheduler.factories import TENANT, GiB, add_engine, item, key

MiB = 1024**2


def error_code(fn, *args, **kwargs) -> Code:
    with pytest.raises(MintError) as info:
        fn(*args, **kwargs)
    return info.value.code


def drain(scheduler, engine_id: str) -> list:
    return scheduler.next_loads(engine_id, 10_000, 0)


def test_register_heartbeat_engines_deregister(scheduler, clock):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    add_engine(scheduler, "c", base_model="other")
    assert [e.info.engine_id for e in scheduler.engines()] == ["a", "b", "c"]
    assert [e.info.engine_id for e in scheduler.engines("tiny")] == ["a", "b"]

    clock.advance(0.5)
    assert scheduler.heartbeat("a", EngineLoad(running=2, waiting=3, tokens_per_s=10.0))
    a = scheduler.engines("tiny")[0]
    assert a.load == EngineLoad(running=2, waiting=3, tokens_per_s=10.0) and a.load.score == 5.0
    assert a.last_seen == clock.now
    assert a.info.address == "a.local:7000" and a.info.host_bytes == 64 * GiB
    assert not scheduler.heartbeat("ghost", EngineLoad())

    scheduler.deregister("b")
    assert [e.info.engine_id for e in scheduler.engines("tiny")] == ["a"]
    assert not scheduler.heartbeat("b", EngineLoad())

    add_engine(scheduler, "a", base_model="other")  # registering again may change the base
    assert scheduler.engines("tiny") == []
    assert [e.info.engine_id for e in scheduler.engines("other")] == ["a", "c"]


def test_reap_after_three_periods_moves_queued_loads_and_drops_placements(scheduler, clock):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.set_resident("a", [key("held")])
    for i in range(4):
        scheduler.enqueue_load("a", item(i))
    delivered = scheduler.next_loads("a", 2, 0)  # taken by "a" and never acked
    assert len(delivered) == 2

    clock.advance(3.0)
    assert scheduler.heartbeat("b", EngineLoad())
    assert scheduler.reap() == []  # exactly three periods: not yet
    assert [e.info.engine_id for e in scheduler.engines()] == ["a", "b"]

    clock.advance(0.5)
    assert scheduler.heartbeat("b", EngineLoad())
    assert scheduler.reap() == ["a"]
    assert [e.info.engine_id for e in scheduler.engines()] == ["b"]
    assert scheduler.holders(key("held")) == []
    assert not scheduler.heartbeat("a", EngineLoad())
    moved = drain(scheduler, "b")
    assert sorted(i.adapter_key for _, i in moved) == sorted(key(i) for i in range(4))

    # "a" finishing a load it had taken changes nothing: the entry now owned by "b" decides.
    entry_id, taken = delivered[0]
    scheduler.ack_load("a", entry_id, taken)
    assert scheduler.holders(taken.adapter_key) == []
    for entry_id, load in moved:
        scheduler.ack_load("b", entry_id, load)
    assert scheduler.holders(taken.adapter_key) == ["b"]
    assert scheduler.reap() == []


def test_register_again_redelivers_what_the_previous_incarnation_took(scheduler):
    add_engine(scheduler, "a")
    scheduler.enqueue_load("a", item(1))
    [(old_entry, load)] = scheduler.next_loads("a", 10, 0)
    add_engine(scheduler, "a")  # the engine restarted before acking
    [(new_entry, again)] = scheduler.next_loads("a", 10, 0)
    assert again == load and new_entry != old_entry
    scheduler.ack_load("a", old_entry, load)
    assert scheduler.holders(load.adapter_key) == []
    scheduler.ack_load("a", new_entry, again)
    assert scheduler.holders(load.adapter_key) == ["a"]


def test_set_resident_replaces_the_reported_set(scheduler):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.set_resident("a", [key(i) for i in range(1000)])
    scheduler.set_resident("b", [key(1)])
    assert scheduler.holders(key(1)) == ["a", "b"]
    scheduler.set_resident("a", [key(i) for i in range(500, 1500)])
    assert scheduler.holders(key(1)) == ["b"]
    assert scheduler.holders(key(700)) == ["a"]
    assert scheduler.holders(key(1200)) == ["a"]
    scheduler.set_resident("ghost", [key(1)])  # unknown engines are told to register by their heartbeat
    assert scheduler.holders(key(1)) == ["b"]


def test_route_prefers_holders_and_the_least_loaded_holder(scheduler):
    for engine_id in "abc":
        add_engine(scheduler, engine_id)
    scheduler.heartbeat("a", EngineLoad(running=5))
    scheduler.set_resident("a", [key("x")])
    route = scheduler.route(key("x"), "tiny")
    assert (route.engine_id, route.address, route.resident) == ("a", "a.local:7000", True)

    scheduler.set_resident("b", [key("x")])
    assert scheduler.route(key("x"), "tiny").engine_id == "b"
    assert scheduler.route(key("x"), "tiny", exclude=frozenset({"b"})).engine_id == "a"
    away = scheduler.route(key("x"), "tiny", exclude=frozenset({"a", "b"}))
    assert (away.engine_id, away.resident) == ("c", False)


def test_a_burst_of_first_requests_lands_on_one_engine(scheduler):
    for engine_id in "abc":
        add_engine(scheduler, engine_id)
    waiting = {engine_id: 0 for engine_id in "abc"}
    chosen = set()
    for _ in range(50):
        route = scheduler.route(key("new"), "tiny")
        assert not route.resident
        chosen.add(route.engine_id)
        # The engine queues each request, so without the assignment bounded load would move later
        # requests of the burst elsewhere.
        waiting[route.engine_id] += 1
        scheduler.heartbeat(route.engine_id, EngineLoad(waiting=waiting[route.engine_id]))
    assert len(chosen) == 1


def test_bounded_load_spreads_new_adapters_away_from_an_overloaded_engine(scheduler):
    for engine_id in "abc":
        add_engine(scheduler, engine_id)
    idle = {scheduler.route(key(f"idle-{i}"), "tiny").engine_id for i in range(60)}
    assert idle == {"a", "b", "c"}

    scheduler.heartbeat("a", EngineLoad(running=30))
    busy = [scheduler.route(key(f"busy-{i}"), "tiny").engine_id for i in range(60)]
    assert "a" not in busy and set(busy) == {"b", "c"}


def test_a_hot_adapter_gets_a_second_replica(make_scheduler):
    scheduler = make_scheduler(hot_rps=1.0, hot_window_s=5)  # hot above 5 requests in 5 s
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.set_resident("a", [key("x")])
    scheduler.heartbeat("a", EngineLoad(running=20))
    first = [scheduler.route(key("x"), "tiny") for _ in range(5)]
    assert all(r.engine_id == "a" and r.resident for r in first)  # overloaded, but not hot: affinity wins

    replica = scheduler.route(key("x"), "tiny")
    assert (replica.engine_id, replica.resident) == ("b", False)
    scheduler.set_resident("b", [key("x")])
    assert scheduler.holders(key("x")) == ["a", "b"]
    route = scheduler.route(key("x"), "tiny")
    assert (route.engine_id, route.resident) == ("b", True)


def test_a_wave_of_1000_adapters_balances_bytes_and_reports_progress(scheduler):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    rng = random.Random(0)
    items = [item(i, size_bytes=rng.randint(1 * MiB, 64 * MiB)) for i in range(1000)]
    wave_id = scheduler.activate_wave("eval", "tiny", items, TENANT)

    status = scheduler.wave_status(wave_id, TENANT)
    assert (status.name, status.total, status.resident, status.failed) == ("eval", 1000, 0, 0)
    assert not status.ready
    shares = {share.engine_id: share for share in status.engines}
    assert set(shares) == {"a", "b"}
    assert sum(s.adapters for s in shares.values()) == 1000
    assert sum(s.bytes for s in shares.values()) == sum(i.size_bytes for i in items)
    assert max(s.bytes for s in shares.values()) / min(s.bytes for s in shares.values()) <= 1.2

    placed = {"a": drain(scheduler, "a"), "b": drain(scheduler, "b")}
    assert {e: len(loads) for e, loads in placed.items()} == {e: s.adapters for e, s in shares.items()}
    assert all(load.wave_id == wave_id for loads in placed.values() for _, load in loads)
    half = placed["a"][: len(placed["a"]) // 2]
    for entry_id, load in half:
        scheduler.ack_load("a", entry_id, load)
    status = scheduler.wave_status(wave_id, TENANT)
    assert status.resident == len(half) and not status.ready
    assert {s.engine_id: s.resident for s in status.engines} == {"a": len(half), "b": 0}

    for engine_id, loads in placed.items():
        for entry_id, load in loads[len(half) if engine_id == "a" else 0:]:
            scheduler.ack_load(engine_id, entry_id, load)
    status = scheduler.wave_status(wave_id, TENANT)
    assert status.resident == 1000 and status.ready and status.failures == ()

    # Activating the wave again gives the same plan: the wave it replaces no longer claims bytes.
    scheduler.activate_wave("eval", "tiny", items, TENANT)
    again = {"a": drain(scheduler, "a"), "b": drain(scheduler, "b")}
    assert {e: {i.adapter_key for _, i in loads} for e, loads in again.items()} == {
        e: {i.adapter_key for _, i in loads} for e, loads in placed.items()
    }


def test_waves_fill_free_bytes_left_by_open_waves(scheduler):
    add_engine(scheduler, "a", host_bytes=10 * GiB)
    add_engine(scheduler, "b", host_bytes=20 * GiB)
    first = scheduler.activate_wave("first", "tiny", [item(f"1-{i}", size_bytes=GiB) for i in range(30)], TENANT)
    assert {s.engine_id: s.adapters for s in scheduler.wave_status(first, TENANT).engines} == {"a": 10, "b": 20}
    second = scheduler.activate_wave("second", "tiny", [item(f"2-{i}", size_bytes=GiB) for i in range(10)], TENANT)
    assert {s.engine_id: s.adapters for s in scheduler.wave_status(second, TENANT).engines} == {"a": 5, "b": 5}


def test_a_wave_is_its_tenants_and_unknown_to_every_other(scheduler):
    add_engine(scheduler, "a")
    wave_id = scheduler.activate_wave("eval", "tiny", [item(1)], "acme")
    with pytest.raises(MintError) as other:
        scheduler.wave_status(wave_id, "rival")
    with pytest.raises(MintError) as unknown:
        scheduler.wave_status("f" * 32, "rival")
    assert other.value.code is Code.NOT_FOUND
    assert other.value.message == unknown.value.message.replace("f" * 32, wave_id)  # no hint that it exists
    assert scheduler.wave_status(wave_id, "acme").total == 1
    assert scheduler.wave_status(wave_id, None).total == 1  # privileged callers read any wave


def test_a_wave_replaces_only_its_own_tenants_wave_of_that_name(scheduler):
    add_engine(scheduler, "a", host_bytes=10 * GiB)
    add_engine(scheduler, "b", host_bytes=20 * GiB)
    first = scheduler.activate_wave("eval", "tiny", [item(f"acme-{i}", size_bytes=GiB) for i in range(10)], "acme")
    assert {s.engine_id: s.adapters for s in scheduler.wave_status(first, "acme").engines} == {"b": 10}
    # Another tenant's "eval" leaves acme's open: its bytes on "b" still count.
    other = scheduler.activate_wave("eval", "tiny", [item(f"rival-{i}", size_bytes=GiB) for i in range(10)], "rival")
    assert {s.engine_id: s.adapters for s in scheduler.wave_status(other, "rival").engines} == {"a": 5, "b": 5}
    assert scheduler.wave_status(first, "acme").total == 10


def test_a_failing_load_is_retried_elsewhere_then_dead_lettered(scheduler):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.enqueue_load("a", item("bad"))
    tried_on = []
    for attempt in range(3):
        [(engine_id, entry_id, load)] = [(e, i, load) for e in "ab" for i, load in drain(scheduler, e)]
        assert load.attempts == attempt
        tried_on.append(engine_id)
        assert scheduler.load_failure(key("bad")) is None
        scheduler.ack_load(engine_id, entry_id, load, error=f"bad tensor shape (try {attempt})")
    assert tried_on == ["a", "b", "a"]
    assert drain(scheduler, "a") == [] and drain(scheduler, "b") == []
    assert scheduler.load_failure(key("bad")) == "bad tensor shape (try 2)"

    scheduler.enqueue_load("b", item("bad"))  # fixed upstream: a later success clears the failure
    [(entry_id, load)] = drain(scheduler, "b")
    scheduler.ack_load("b", entry_id, load)
    assert scheduler.load_failure(key("bad")) is None


def test_a_wave_records_failed_items_and_is_ready_with_them(make_scheduler):
    scheduler = make_scheduler(max_attempts=2)
    add_engine(scheduler, "a")
    wave_id = scheduler.activate_wave("w", "tiny", [item("good"), item("bad")], TENANT)
    for _ in range(2):  # one engine: the retry stays on it
        for entry_id, load in drain(scheduler, "a"):
            error = "not a LoRA adapter" if load.adapter_key == key("bad") else None
            scheduler.ack_load("a", entry_id, load, error=error)
    status = scheduler.wave_status(wave_id, TENANT)
    assert (status.total, status.resident, status.failed, status.ready) == (2, 1, 1, True)
    assert status.failures == (f"{key('bad')}: not a LoRA adapter",)


def test_reaping_re_places_a_wave_share_onto_live_engines(scheduler, clock):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    wave_id = scheduler.activate_wave("w", "tiny", [item(i) for i in range(10)], TENANT)
    a_loads = drain(scheduler, "a")
    for entry_id, load in a_loads[:2]:
        scheduler.ack_load("a", entry_id, load)  # two resident on "a", the rest queued there
    clock.advance(3.5)
    scheduler.heartbeat("b", EngineLoad())
    assert scheduler.reap() == ["a"]

    status = scheduler.wave_status(wave_id, TENANT)
    assert [(s.engine_id, s.adapters) for s in status.engines] == [("b", 10)]
    assert status.resident == 0
    for entry_id, load in drain(scheduler, "b"):
        scheduler.ack_load("b", entry_id, load)
    assert scheduler.wave_status(wave_id, TENANT).resident == 10


def test_a_wave_is_not_ready_on_an_engine_that_died_before_the_reaper_ran(scheduler, clock):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    wave_id = scheduler.activate_wave("w", "tiny", [item(i) for i in range(10)], TENANT)
    for engine_id in ("a", "b"):
        for entry_id, load in drain(scheduler, engine_id):
            scheduler.ack_load(engine_id, entry_id, load)
    assert scheduler.wave_status(wave_id, TENANT).ready
    clock.advance(3.5)
    scheduler.heartbeat("b", EngineLoad())  # "a" is dead but not reaped yet: its share no longer counts
    status = scheduler.wave_status(wave_id, TENANT)
    on_b = next(s.adapters for s in status.engines if s.engine_id == "b")
    assert (status.resident, status.ready) == (on_b, False)
    assert 0 < on_b < 10


def test_next_loads_waits_for_a_load(scheduler):
    add_engine(scheduler, "a")
    got = []
    reader = threading.Thread(target=lambda: got.extend(scheduler.next_loads("a", 10, 10.0)))
    reader.start()
    time.sleep(0.2)  # let the reader block first, so the wake-up path runs
    scheduler.enqueue_load("a", item(1))
    reader.join()
    assert [load.adapter_key for _, load in got] == [key(1)]


def test_unavailable_without_an_engine_for_the_base(scheduler, clock):
    assert error_code(scheduler.route, key(1), "tiny") is Code.UNAVAILABLE
    add_engine(scheduler, "a")
    assert error_code(scheduler.route, key(1), "other") is Code.UNAVAILABLE
    assert error_code(scheduler.route, key(1), "tiny", exclude=frozenset({"a"})) is Code.UNAVAILABLE
    assert error_code(scheduler.activate_wave, "w", "other", [item(1)], TENANT) is Code.UNAVAILABLE
    assert error_code(scheduler.wave_status, "no-such-wave", TENANT) is Code.NOT_FOUND
    assert error_code(scheduler.enqueue_load, "ghost", item(1)) is Code.NOT_FOUND
    clock.advance(3.5)  # seen too long ago: not routable even before the reaper runs
    assert error_code(scheduler.route, key(1), "tiny") is Code.UNAVAILABLE


def test_loads_orphaned_by_the_last_engine_do_not_mark_the_adapter_failed(scheduler, clock):
    add_engine(scheduler, "only")
    scheduler.enqueue_load("only", item("x"))
    scheduler.deregister("only")  # e.g. a rolling restart of a single-engine base
    assert scheduler.load_failure(key("x")) is None
    add_engine(scheduler, "only")
    assert scheduler.route(key("x"), "tiny").engine_id == "only"
