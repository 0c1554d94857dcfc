"""Scheduler fixtures: each contract test runs on both backends, against a clock the test moves."""

from __future__ import annotations

import pytest
import redis

from services.scheduler import MemoryScheduler, RedisScheduler
from tests.conftest import TEST_REDIS_URL
from tests.scheduler.factories import FakeClock, delete_prefix


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def make_scheduler(request, clock, redis_prefix, redis_client):
    """A factory for schedulers of one backend (options: SchedulerConfig fields); Redis keys of the
    test's prefix are deleted afterwards."""
    made = []

    def make(**options):
        if request.param == "memory":
            scheduler = MemoryScheduler(heartbeat_s=1.0, clock=clock, **options)
        else:
            scheduler = RedisScheduler(TEST_REDIS_URL, redis_prefix, heartbeat_s=1.0, clock=clock, **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()
    delete_prefix(redis_client, redis_prefix)


@pytest.fixture
def scheduler(make_scheduler):
    return make_scheduler()
