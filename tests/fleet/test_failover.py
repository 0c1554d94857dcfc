"""Failover with real processes: an engine killed mid-wave, and Redis restarted mid-run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mint.adapters.identity import ref_key
from mint.errors import MintError
from mint.models.loading import read_config
from mint.sdk import SamplingParams
from services.scheduler import RedisScheduler
from tests.engine.conftest import random_adapter
from tests.fleet.conftest import HEARTBEAT_S

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=False)


def publish_many(fleet, count: int, start: int = 0) -> list[str]:
    """`count` policies with one distinct rank-2 adapter each; returns their revision refs."""
    config = read_config(fleet.base_dir)
    refs = []
    for i in range(start, start + count):
        policy = f"policy-{i}"
        fleet.client.catalog.create_policy(policy, "tiny")
        revision = fleet.client.catalog.publish(policy, random_adapter(config, rank=2, seed=i))
        refs.append(f"acme/{policy}@{revision.number}")
    return refs


def sample(fleet, ref: str) -> list[int]:
    return fleet.client.create_sampling_client(ref).sample([1, 2, 3], 1, PARAMS).sequences[0].tokens


def test_an_engine_killed_mid_wave_loses_no_request(fleet):
    refs = publish_many(fleet, 24)
    scheduler = RedisScheduler(fleet.redis.url, heartbeat_s=HEARTBEAT_S)
    wave = fleet.client.activate_wave(refs, "eval")
    assert wave.total == 24 and {share.engine_id for share in wave.engines} == {"engine-0", "engine-1"}
    keys = [ref_key(fleet.client.catalog.resolve(ref).adapter) for ref in refs]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(sample, fleet, ref) for ref in refs * 3]
        time.sleep(0.3)
        fleet.engines[0].kill()
        killed = time.monotonic()
        # Within 3 heartbeat periods no adapter routes to the dead engine any more.
        while any(scheduler.route(key, "tiny").engine_id == "engine-0" for key in keys):
            assert time.monotonic() - killed < 3 * HEARTBEAT_S + 0.5, "adapters still routed to the dead engine"
            time.sleep(0.05)
        results = [f.result(timeout=120) for f in futures]
    assert all(len(tokens) == 8 for tokens in results)  # every request answered
    # The wave finishes on the survivor: the dead engine's loads were reclaimed and placed there.
    deadline = time.monotonic() + 60
    while not (status := fleet.client.get_wave(wave.wave_id)).ready:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status.resident == 24 and status.failed == 0
    # The wave counts only live engines' adapters, so it can be ready before the reaper has dropped the dead
    # engine's placements: that takes up to 3 heartbeat periods to be declared dead plus 1 for the reaper.
    reaped_by = killed + 4 * HEARTBEAT_S + 1.0
    while not all(scheduler.holders(key) == ["engine-1"] for key in keys):
        assert time.monotonic() < reaped_by, "the dead engine still holds placements after the reaper's deadline"
        time.sleep(0.05)
    assert [e.engine_id for e in fleet.client.engines()] == ["engine-1"]


def test_redis_restart_recovers_routing_and_loses_no_revision(fleet):
    refs = publish_many(fleet, 4)
    before = {ref: sample(fleet, ref) for ref in refs}
    fleet.redis.kill()
    with pytest.raises(MintError):  # no routing without Redis: a clear error, not a hang
        sample(fleet, refs[0])
    # The catalog (Postgres) keeps working meanwhile; publishing needs no Redis.
    refs += publish_many(fleet, 1, start=4)
    fleet.redis.start()  # empty: every key is gone
    deadline = time.monotonic() + 30
    while len(fleet.client.engines()) < 2:
        assert time.monotonic() < deadline, "engines did not re-register after the Redis restart"
        time.sleep(0.1)
    for ref, tokens in before.items():
        assert sample(fleet, ref) == tokens  # same adapter, same greedy answer
    assert len(sample(fleet, refs[-1])) == 8
    numbers = sorted(r.number for r in fleet.client.catalog.list_revisions())
    assert numbers == [1] * 5

