"""What only the Redis backend has: its streams, losing Redis, reaching it, and a reaper dying mid-way."""

from __future__ import annotations

import pytest
import redis

from mint.errors import Code, MintError
from services.scheduler import EngineLoad, MemoryScheduler, RedisScheduler, open_scheduler
from tests.conftest import TEST_REDIS_URL
from tests.scheduler.factories import TENANT, FakeClock, add_engine, delete_prefix, item, key


@pytest.fixture
def scheduler(clock, redis_prefix, redis_client):
    scheduler = RedisScheduler(TEST_REDIS_URL, prefix=redis_prefix, heartbeat_s=1.0, clock=clock)
    yield scheduler
    scheduler.close()
    delete_prefix(redis_client, redis_prefix)


def test_dead_letters_land_on_the_dead_letter_stream(scheduler, redis_client, redis_prefix):
    add_engine(scheduler, "a")
    scheduler.enqueue_load("a", item("bad", size_bytes=1234))
    for _ in range(3):
        [(entry_id, load)] = scheduler.next_loads("a", 10, 0)
        scheduler.ack_load("a", entry_id, load, error="adapter rank 512 exceeds the engine's max 64")
    [(_, fields)] = redis_client.xrange(f"{redis_prefix}loads:dead")
    assert fields[b"adapter_key"] == key("bad").encode()
    assert fields[b"reason"] == b"adapter rank 512 exceeds the engine's max 64"
    assert (fields[b"engine"], fields[b"attempts"], fields[b"size_bytes"]) == (b"a", b"3", b"1234")
    assert fields[b"adapter"] == b"adapter-ref-bad"
    assert redis_client.xlen(f"{redis_prefix}loads:a") == 0  # acked entries are deleted, not kept


def test_reaping_deletes_the_dead_engines_stream(scheduler, clock, redis_client, redis_prefix):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.enqueue_load("a", item(1))
    clock.advance(3.5)
    scheduler.heartbeat("b", EngineLoad())
    assert scheduler.reap() == ["a"]
    assert redis_client.exists(f"{redis_prefix}loads:a") == 0
    assert redis_client.zcard(f"{redis_prefix}reaped") == 0
    assert [load.adapter_key for _, load in scheduler.next_loads("b", 10, 0)] == [key(1)]


def test_a_reaper_that_died_mid_way_is_finished_by_the_next(scheduler, clock):
    add_engine(scheduler, "a")
    add_engine(scheduler, "b")
    scheduler.enqueue_load("a", item(1))
    scheduler._drop("a", cutoff=None)  # a reaper detached the stream of "a", then died
    assert scheduler.next_loads("b", 10, 0) == []
    clock.advance(3.5)
    scheduler.heartbeat("b", EngineLoad())
    assert scheduler.reap() == []  # "a" is gone already; its loads are not
    assert [load.adapter_key for _, load in scheduler.next_loads("b", 10, 0)] == [key(1)]


def test_after_redis_loses_everything_engines_register_again(scheduler, redis_client, redis_prefix):
    add_engine(scheduler, "a")
    scheduler.set_resident("a", [key(1)])
    wave_id = scheduler.activate_wave("w", "tiny", [item(2)], TENANT)
    [(entry_id, load)] = scheduler.next_loads("a", 10, 0)

    delete_prefix(redis_client, redis_prefix)  # what a restart of a Redis that keeps nothing on disk does

    assert not scheduler.heartbeat("a", EngineLoad())
    assert scheduler.engines() == [] and scheduler.holders(key(1)) == []
    assert scheduler.next_loads("a", 10, 0) == []
    scheduler.ack_load("a", entry_id, load)  # a load finishing meanwhile is no error
    with pytest.raises(MintError) as info:
        scheduler.wave_status(wave_id, TENANT)
    assert info.value.code is Code.NOT_FOUND
    with pytest.raises(MintError) as info:
        scheduler.route(key(1), "tiny")
    assert info.value.code is Code.UNAVAILABLE

    add_engine(scheduler, "a")
    assert scheduler.heartbeat("a", EngineLoad())
    scheduler.set_resident("a", [key(1)])
    route = scheduler.route(key(1), "tiny")
    assert (route.engine_id, route.resident) == ("a", True)
    scheduler.enqueue_load("a", item(3))
    assert [load.adapter_key for _, load in scheduler.next_loads("a", 10, 0)] == [key(3)]


def test_open_scheduler_picks_the_backend_by_url(redis_prefix):
    fleet = open_scheduler(TEST_REDIS_URL, prefix=redis_prefix, heartbeat_s=2.0)
    assert isinstance(fleet, RedisScheduler) and fleet.prefix == redis_prefix and fleet.heartbeat_s == 2.0
    fleet.close()
    embedded = open_scheduler(None, prefix=redis_prefix, heartbeat_s=2.0)  # the gateway passes its prefix
    assert isinstance(embedded, MemoryScheduler) and embedded.config.dead_after_s == 6.0


def test_unreachable_redis_is_unavailable(redis_prefix):
    scheduler = RedisScheduler("redis://127.0.0.1:1/0", prefix=redis_prefix, clock=FakeClock())
    with pytest.raises(MintError) as info:
        scheduler.heartbeat("a", EngineLoad())
    assert info.value.code is Code.UNAVAILABLE
    assert "redis://127.0.0.1:1/0" in info.value.message
    scheduler.close()


def test_a_client_that_decodes_responses_is_refused(redis_prefix):
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    with pytest.raises(MintError) as info:
        RedisScheduler(client, prefix=redis_prefix)
    assert info.value.code is Code.INVALID_ARGUMENT
    client.close()


def test_a_first_placement_steers_every_gateway(clock, redis_prefix, redis_client):
    """Another gateway that would place the adapter elsewhere (loads moved meanwhile) follows it."""
    first = RedisScheduler(TEST_REDIS_URL, prefix=redis_prefix, clock=clock)
    second = RedisScheduler(TEST_REDIS_URL, prefix=redis_prefix, clock=clock)
    for engine_id in "abc":
        add_engine(first, engine_id)
    chosen = first.route(key("new"), "tiny").engine_id
    first.heartbeat(chosen, EngineLoad(running=100))  # HRW with bounded load now avoids it
    assert second.route(key("other-new"), "tiny").engine_id != chosen
    assert second.route(key("new"), "tiny").engine_id == chosen
    first.close()
    second.close()
    delete_prefix(redis_client, redis_prefix)
