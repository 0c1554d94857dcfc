"""The scheduler: engine registry, adapter placement and routing, active waves, load queues.

`open_scheduler` picks the backend: Redis for a fleet (a URL is given), memory for the embedded process;
`open_quotas` does the same for the per-tenant limiter (services/scheduler/quotas.py).
"""

from __future__ import annotations

from services.scheduler.base import (
    EngineInfo,
    EngineLoad,
    LiveEngine,
    LoadItem,
    Route,
    Scheduler,
    WaveShare,
    WaveStatus,
)
from services.scheduler.config import SchedulerConfig
from services.scheduler.memory import MemoryScheduler
from services.scheduler.quotas import QuotaExceeded, QuotaLimiter, TenantQuota, open_quotas
from services.scheduler.redis_backend import RedisScheduler

__all__ = [
    "EngineInfo",
    "EngineLoad",
    "LiveEngine",
    "LoadItem",
    "MemoryScheduler",
    "QuotaExceeded",
    "QuotaLimiter",
    "RedisScheduler",
    "Route",
    "Scheduler",
    "SchedulerConfig",
    "TenantQuota",
    "WaveShare",
    "WaveStatus",
    "open_quotas",
    "open_scheduler",
]


def open_scheduler(redis_url: str | None, *, prefix: str = "mint:", **kw) -> Scheduler:
    """The Redis backend under `prefix` when a URL is given, else the in-memory one (which has no keys, so
    no prefix). Other kw: heartbeat_s, clock, and SchedulerConfig's fields."""
    if redis_url:
        return RedisScheduler(redis_url, prefix=prefix, **kw)
    return MemoryScheduler(**kw)
