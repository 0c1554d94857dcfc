"""Per-tenant quotas that live outside the catalog's transactions: requests per second (a token bucket) and
concurrent slots (sampling sequences, training sessions), with two backends behind one interface — Redis
for a fleet, where every gateway and trainer shares one bucket and one slot count per tenant, and memory
for the embedded process.

A slot is a lease: it lasts `lease_s` unless its holder renews it. `QuotaLimiter` renews every lease this
process holds from one background thread, so a live sequence or session keeps its slot for as long as it
lasts, and a process that dies (a crashed gateway) leaks its slots for at most `lease_s`.

The limits themselves live in the catalog (tenant_limits; GetTenantLimits): `TenantQuota` is the part of
them this module enforces, and `QuotaLimiter` reads them through a short-lived cache (`limits_ttl_s`).

Redis keys (under the prefix):

    quota:rate:<tenant>          hash  tokens, at (the bucket's level and when it was last filled)
    quota:slots:<kind>:<tenant>  zset  lease id -> when the lease ends (unix s)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import grpc
import redis

from mint.errors import Code, MintError

log = logging.getLogger(__name__)

SEQUENCES = "sequences"
SESSIONS = "sessions"
_LIMIT_NAMES = {SEQUENCES: "max_concurrent_sequences", SESSIONS: "max_concurrent_sessions"}
_WHAT = {SEQUENCES: "sampling sequences in flight", SESSIONS: "open training sessions"}


class QuotaExceeded(MintError):
    """RESOURCE_EXHAUSTED naming the tenant, the limit and its value, what the tenant holds now, and when to
    retry. `retry_after_s` (None: not before the limit changes) also travels as the gRPC trailing metadata
    `retry-after-s` and the HTTP door's Retry-After header."""

    def __init__(self, message: str, *, tenant: str, limit: str, retry_after_s: float | None):
        super().__init__(Code.RESOURCE_EXHAUSTED, message)
        self.tenant = tenant
        self.limit = limit
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (self.message, self.tenant, self.limit, self.retry_after_s))


def _rebuild(message: str, tenant: str, limit: str, retry_after_s: float | None) -> QuotaExceeded:
    return QuotaExceeded(message, tenant=tenant, limit=limit, retry_after_s=retry_after_s)


def retry_phrase(seconds: float) -> str:
    """'retry after N s', N rounded up to what a client can wait (at least 0.1 s)."""
    return f"retry after {max(0.1, math.ceil(seconds * 10) / 10):g} s"


@dataclasses.dataclass(frozen=True, slots=True)
class TenantQuota:
    """The limits this module enforces for one tenant; None is no limit."""

    requests_per_second: float | None = None
    burst: int | None = None  # the bucket's size; default: one second of requests (at least 1)
    max_concurrent_sequences: int | None = None
    max_concurrent_sessions: int | None = None

    @property
    def bucket(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.requests_per_second or 1))

    def slots(self, kind: str) -> int | None:
        return self.max_concurrent_sequences if kind == SEQUENCES else self.max_concurrent_sessions


UNLIMITED = TenantQuota()


class QuotaBackend(Protocol):
    def take(self, tenant: str, rate: float, burst: int, now: float) -> float:
        """Take one token from the tenant's bucket: 0 when taken, else seconds until one is there."""
        ...

    def acquire(self, kind: str, tenant: str, lease: str, limit: int, until: float, now: float) -> tuple[bool, int, float]:
        """(held, leases live now, when the earliest of them ends) for a new lease ending at `until`."""
        ...

    def renew(self, kind: str, tenant: str, leases: list[str], until: float) -> None: ...

    def release(self, kind: str, tenant: str, lease: str) -> None: ...

    def held(self, kind: str, tenant: str, now: float) -> int: ...


class MemoryQuotas:
    """The embedded backend: the same buckets and leases in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._leases: dict[tuple[str, str], dict[str, float]] = {}  # (kind, tenant) -> lease -> until

    def take(self, tenant: str, rate: float, burst: int, now: float) -> float:
        with self._lock:
            tokens, at = self._buckets.get(tenant, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
            if tokens >= 1.0:
                self._buckets[tenant] = (tokens - 1.0, now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (1.0 - tokens) / rate

    def acquire(self, kind: str, tenant: str, lease: str, limit: int, until: float, now: float) -> tuple[bool, int, float]:
        with self._lock:
            live = self._live(kind, tenant, now)
            if len(live) >= limit:
                return False, len(live), min(live.values(), default=now)
            live[lease] = until
            return True, len(live), min(live.values())

    def renew(self, kind: str, tenant: str, leases: list[str], until: float) -> None:
        with self._lock:
            live = self._leases.get((kind, tenant), {})
            for lease in leases:
                if lease in live:
                    live[lease] = until

    def release(self, kind: str, tenant: str, lease: str) -> None:
        with self._lock:
            self._leases.get((kind, tenant), {}).pop(lease, None)

    def held(self, kind: str, tenant: str, now: float) -> int:
        with self._lock:
            return len(self._live(kind, tenant, now))

    def _live(self, kind: str, tenant: str, now: float) -> dict[str, float]:
        live = self._leases.setdefault((kind, tenant), {})
        for lease in [k for k, until in live.items() if until <= now]:
            del live[lease]
        return live


# KEYS: quota:rate:<tenant>. ARGV: rate (tokens/s), burst, now (unix s), ttl (s).
# 0 when a token was taken; else the seconds until one will be there (as a string: Lua numbers truncate).
_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return tostring(wait)
"""

# KEYS: quota:slots:<kind>:<tenant>. ARGV: lease id, limit, until, now, ttl (s).
# {1 held | 0 refused, leases live now, earliest end (string)}. Expired leases are dropped first.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local live = redis.call('ZCARD', KEYS[1])
local held = 0
if live < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  live = live + 1
  held = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {held, live, first[2] or ARGV[4]}
"""


class RedisQuotas:
    """The fleet backend: one bucket and one lease set per tenant in Redis, shared by every process."""

    def __init__(self, client: str | redis.Redis, prefix: str = "mint:"):
        self.redis = redis.Redis.from_url(client, socket_connect_timeout=5) if isinstance(client, str) else client
        self.prefix = prefix
        self._take = self.redis.register_script(_TAKE)
        self._acquire = self.redis.register_script(_ACQUIRE)

    def close(self) -> None:
        self.redis.close()

    def _rate_key(self, tenant: str) -> str:
        return f"{self.prefix}quota:rate:{tenant}"

    def _slots_key(self, kind: str, tenant: str) -> str:
        return f"{self.prefix}quota:slots:{kind}:{tenant}"

    def take(self, tenant: str, rate: float, burst: int, now: float) -> float:
        ttl = math.ceil(burst / rate) + 60  # a bucket left alone this long is full again: forget it
        with _unavailable():
            return float(self._take([self._rate_key(tenant)], [repr(rate), burst, repr(now), ttl]))

    def acquire(self, kind: str, tenant: str, lease: str, limit: int, until: float, now: float) -> tuple[bool, int, float]:
        ttl = math.ceil(until - now) + 60
        with _unavailable():
            held, live, first = self._acquire([self._slots_key(kind, tenant)], [lease, limit, repr(until), repr(now), ttl])
        return bool(held), int(live), float(first)

    def renew(self, kind: str, tenant: str, leases: list[str], until: float) -> None:
        with _unavailable():
            self.redis.zadd(self._slots_key(kind, tenant), {lease: until for lease in leases}, xx=True)

    def release(self, kind: str, tenant: str, lease: str) -> None:
        with _unavailable():
            self.redis.zrem(self._slots_key(kind, tenant), lease)

    def held(self, kind: str, tenant: str, now: float) -> int:
        with _unavailable():
            return int(self.redis.zcount(self._slots_key(kind, tenant), f"({now!r}", "+inf"))


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise MintError(Code.UNAVAILABLE, f"the quota store (Redis) is unreachable: {err}") from err


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    """A held lease on one concurrent slot; `release` it when the work ends (again: a no-op)."""

    kind: str
    tenant: str
    lease: str
    _release: Callable[[Slot], None]

    def release(self) -> None:
        self._release(self)


class QuotaLimiter:
    """Enforces TenantQuota for every tenant: `admit` per request, `hold` a slot per sequence or session.
    `limits(tenant)` is where the quotas come from (the catalog's GetTenantLimits), cached `limits_ttl_s`;
    a tenant whose limits cannot be read is served without them (and the failure logged)."""

    def __init__(
        self, backend: QuotaBackend, limits: Callable[[str], TenantQuota], *, limits_ttl_s: float = 5.0, lease_s: float = 60.0,
        clock: Callable[[], float] = time.time, renew: bool = True,
    ):
        self.backend = backend
        self._limits = limits
        self._limits_ttl_s = limits_ttl_s
        self.lease_s = lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, TenantQuota]] = {}
        self._held: dict[str, Slot] = {}
        self._stop = threading.Event()
        if renew:
            threading.Thread(target=self._renew_loop, name="quota-leases", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def quota(self, tenant: str) -> TenantQuota:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < self._limits_ttl_s:
            return cached[1]
        try:
            quota = self._limits(tenant)
        except MintError as err:
            log.warning("tenant %s's limits could not be read (%s); serving it without them", tenant, err)
            quota = cached[1] if cached is not None else UNLIMITED
        with self._lock:
            self._cache[tenant] = (now, quota)
        return quota

    def forget(self, tenant: str) -> None:
        """Read `tenant`'s limits afresh at its next request."""
        with self._lock:
            self._cache.pop(tenant, None)

    def admit(self, tenant: str) -> None:
        """Take one of `tenant`'s requests from its bucket, or refuse it (QuotaExceeded)."""
        quota = self.quota(tenant)
        if quota.requests_per_second is None:
            return
        wait = self.backend.take(tenant, quota.requests_per_second, quota.bucket, self._clock())
        if wait > 0:
            raise QuotaExceeded(
                f"tenant {tenant} is over its request rate (requests_per_second={quota.requests_per_second:g}, "
                f"burst={quota.bucket}): its {quota.bucket} requests of burst are spent; {retry_phrase(wait)}",
                tenant=tenant, limit="requests_per_second", retry_after_s=wait,
            )

    def hold(self, kind: str, tenant: str) -> Slot | None:
        """One of `tenant`'s `kind` slots (SEQUENCES, SESSIONS), or QuotaExceeded; None when unlimited."""
        limit = self.quota(tenant).slots(kind)
        if limit is None:
            return None
        now = self._clock()
        slot = Slot(kind, tenant, uuid.uuid4().hex, self._release)
        held, live, first_end = self.backend.acquire(kind, tenant, slot.lease, limit, now + self.lease_s, now)
        if not held:
            raise _full(kind, tenant, limit, live, first_end - now)
        with self._lock:
            self._held[slot.lease] = slot
        return slot

    def check(self, kind: str, tenant: str) -> None:
        """QuotaExceeded when `tenant` holds all its `kind` slots now (a check before work that `hold` then guards)."""
        limit = self.quota(tenant).slots(kind)
        if limit is not None and (live := self.held(kind, tenant)) >= limit:
            raise _full(kind, tenant, limit, live, 1.0)

    @contextmanager
    def holding(self, kind: str, tenant: str) -> Iterator[Slot | None]:
        slot = self.hold(kind, tenant)
        try:
            yield slot
        finally:
            if slot is not None:
                slot.release()

    def held(self, kind: str, tenant: str) -> int:
        return self.backend.held(kind, tenant, self._clock())

    def renew(self) -> None:
        """Extend every lease this process holds by lease_s (the background thread does this every lease_s / 3)."""
        with self._lock:
            slots = list(self._held.values())
        until = self._clock() + self.lease_s
        groups: dict[tuple[str, str], list[str]] = {}
        for slot in slots:
            groups.setdefault((slot.kind, slot.tenant), []).append(slot.lease)
        for (kind, tenant), leases in groups.items():
            self.backend.renew(kind, tenant, leases, until)

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if self._held.pop(slot.lease, None) is None:
                return
        try:
            self.backend.release(slot.kind, slot.tenant, slot.lease)
        except MintError as err:  # its lease ends by itself
            log.warning("could not release a %s slot of %s (%s); it frees when its lease ends", slot.kind, slot.tenant, err)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except MintError as err:
                log.warning("could not renew quota leases: %s", err)


def _full(kind: str, tenant: str, limit: int, live: int, until_first_ends_s: float) -> QuotaExceeded:
    # A slot frees when its holder finishes (no knowing when) or, for a lost holder, when its lease ends.
    wait = min(1.0, max(0.0, until_first_ends_s))
    return QuotaExceeded(
        f"tenant {tenant} has {live} {_WHAT[kind]}, its limit ({_LIMIT_NAMES[kind]}={limit}); {retry_phrase(wait)}, or once one of them ends",
        tenant=tenant, limit=_LIMIT_NAMES[kind], retry_after_s=wait,
    )


def quota_of(limits) -> TenantQuota:
    """The TenantQuota in a catalog TenantLimits (the message, or the catalog's own entity): unset is None."""
    has = limits.HasField if hasattr(limits, "HasField") else (lambda name: getattr(limits, name) is not None)
    fields = ("requests_per_second", "burst", "max_concurrent_sequences", "max_concurrent_sessions")
    return TenantQuota(**{name: getattr(limits, name) if has(name) else None for name in fields})


def catalog_limits(catalog: grpc.Channel, service_key: str) -> Callable[[str], TenantQuota]:
    """Where a service reads tenants' quotas: the catalog's GetTenantLimits, with the service's own key."""
    from mint import auth
    from mint.proto import catalog_pb2, catalog_pb2_grpc

    stub = catalog_pb2_grpc.CatalogServiceStub(catalog)

    def read(tenant: str) -> TenantQuota:
        try:
            limits = stub.GetTenantLimits(catalog_pb2.GetTenantLimitsRequest(tenant=tenant), metadata=auth.call_metadata(service_key), timeout=10)
        except grpc.RpcError as err:
            raise MintError.from_rpc_error(err) from None
        return quota_of(limits)

    return read


def open_quotas(redis_url: str | None, *, prefix: str = "mint:") -> QuotaBackend:
    """The Redis backend under `prefix` when a URL is given, else the in-memory one."""
    return RedisQuotas(redis_url, prefix) if redis_url else MemoryQuotas()
