"""The quota limiter's contract, on both backends (Redis, memory) against a clock the test moves: the token
bucket refuses past its burst and refills at its rate; slots refuse past the limit and free on release; a
lease not renewed (its holder died) ends after lease_s, one renewed lives on; limits come from the source,
cached; refusals are RESOURCE_EXHAUSTED naming tenant, limit and when to retry."""

from __future__ import annotations

import pickle

import pytest

from mint.errors import Code, MintError
from services.scheduler import QuotaExceeded, QuotaLimiter, TenantQuota
from services.scheduler.quotas import SEQUENCES, SESSIONS, MemoryQuotas, RedisQuotas
from tests.conftest import TEST_REDIS_URL
from tests.scheduler.factories import delete_prefix


@pytest.fixture(params=["memory", "redis"])
def backend(request, redis_prefix, redis_client):
    if request.param == "memory":
        yield MemoryQuotas()
        return
    quotas = RedisQuotas(TEST_REDIS_URL, redis_prefix)
    yield quotas
    quotas.close()
    delete_prefix(redis_client, redis_prefix)


@pytest.fixture
def limits():
    return {"acme": TenantQuota(requests_per_second=2.0, burst=4, max_concurrent_sequences=2, max_concurrent_sessions=1)}


@pytest.fixture
def make_limiter(backend, clock, limits):
    made = []

    def make(**options):
        limiter = QuotaLimiter(backend, lambda tenant: limits.get(tenant, TenantQuota()), clock=clock, renew=False, **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


@pytest.fixture
def limiter(make_limiter):
    return make_limiter(lease_s=30.0)


def refused(fn) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        fn()
    assert caught.value.code is Code.RESOURCE_EXHAUSTED
    return caught.value


def test_the_bucket_admits_its_burst_then_refuses_until_it_refills(limiter, clock):
    for _ in range(4):
        limiter.admit("acme")
    err = refused(lambda: limiter.admit("acme"))
    assert err.limit == "requests_per_second" and err.tenant == "acme"
    assert err.retry_after_s == pytest.approx(0.5)
    assert "tenant acme is over its request rate (requests_per_second=2, burst=4)" in err.message and "retry after 0.5 s" in err.message
    clock.advance(0.5)
    limiter.admit("acme")
    refused(lambda: limiter.admit("acme"))
    clock.advance(100)  # refills to the burst, never past it
    for _ in range(4):
        limiter.admit("acme")
    refused(lambda: limiter.admit("acme"))


def test_tenants_without_limits_and_other_tenants_are_not_limited(limiter):
    for _ in range(4):
        limiter.admit("acme")
    for _ in range(100):
        limiter.admit("globex")
    assert limiter.hold(SEQUENCES, "globex") is None


def test_two_limiters_on_one_backend_share_the_bucket_and_the_slots(make_limiter):
    first, second = make_limiter(), make_limiter()
    first.admit("acme")
    second.admit("acme")
    first.admit("acme")
    second.admit("acme")
    refused(lambda: first.admit("acme"))
    first.hold(SEQUENCES, "acme")
    second.hold(SEQUENCES, "acme")
    err = refused(lambda: first.hold(SEQUENCES, "acme"))
    assert "tenant acme has 2 sampling sequences in flight, its limit (max_concurrent_sequences=2)" in err.message
    assert "retry after" in err.message


def test_slots_free_on_release_once(limiter):
    one = limiter.hold(SEQUENCES, "acme")
    limiter.hold(SEQUENCES, "acme")
    refused(lambda: limiter.hold(SEQUENCES, "acme"))
    one.release()
    one.release()  # again: a no-op, it frees no second slot
    assert limiter.held(SEQUENCES, "acme") == 1
    limiter.hold(SEQUENCES, "acme")
    refused(lambda: limiter.hold(SEQUENCES, "acme"))


def test_kinds_are_counted_apart(limiter):
    limiter.hold(SESSIONS, "acme")
    err = refused(lambda: limiter.hold(SESSIONS, "acme"))
    assert "1 open training sessions, its limit (max_concurrent_sessions=1)" in err.message
    limiter.hold(SEQUENCES, "acme")


def test_holding_releases_on_error(limiter):
    with pytest.raises(ValueError), limiter.holding(SEQUENCES, "acme"):
        assert limiter.held(SEQUENCES, "acme") == 1
        raise ValueError("the sample failed")
    assert limiter.held(SEQUENCES, "acme") == 0


def test_a_lease_nobody_renews_ends_and_a_renewed_one_lives_on(make_limiter, clock):
    crashed, alive = make_limiter(lease_s=30.0), make_limiter(lease_s=30.0)
    crashed.hold(SEQUENCES, "acme")  # its process dies: nobody renews or releases it
    alive.hold(SEQUENCES, "acme")
    for _ in range(4):
        clock.advance(20)
        alive.renew()
    assert alive.held(SEQUENCES, "acme") == 1
    alive.hold(SEQUENCES, "acme")
    refused(lambda: alive.hold(SEQUENCES, "acme"))


def test_limits_are_cached_then_read_again(backend, clock, limits):
    reads = []

    def source(tenant):
        reads.append(tenant)
        return limits.get(tenant, TenantQuota())

    limiter = QuotaLimiter(backend, source, clock=clock, renew=False, limits_ttl_s=5.0)
    for _ in range(3):
        limiter.admit("acme")
    assert reads == ["acme"]
    limits["acme"] = TenantQuota(requests_per_second=1000.0)
    refused(lambda: (limiter.admit("acme"), limiter.admit("acme")))
    clock.advance(5)
    for _ in range(50):
        limiter.admit("acme")
    assert reads == ["acme", "acme"]
    limits["acme"] = TenantQuota(requests_per_second=1.0, burst=1)
    limiter.forget("acme")
    limiter.admit("acme")
    refused(lambda: limiter.admit("acme"))


def test_limits_that_cannot_be_read_serve_the_tenant_unlimited(backend, clock):
    def source(tenant):
        raise MintError(Code.UNAVAILABLE, "the catalog is down")

    limiter = QuotaLimiter(backend, source, clock=clock, renew=False)
    for _ in range(10):
        limiter.admit("acme")
    assert limiter.hold(SEQUENCES, "acme") is None


def test_the_default_burst_is_one_second_of_requests():
    assert TenantQuota(requests_per_second=7.5).bucket == 8
    assert TenantQuota(requests_per_second=0.2).bucket == 1
    assert TenantQuota(requests_per_second=3, burst=10).bucket == 10


def test_quota_errors_survive_pickling():
    err = QuotaExceeded("tenant acme ...; retry after 1 s", tenant="acme", limit="requests_per_second", retry_after_s=1.0)
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.message, again.limit, again.retry_after_s) == (err.code, err.message, "requests_per_second", 1.0)
