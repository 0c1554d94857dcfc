"""Building blocks for scheduler tests: a clock tests move by hand, adapters (by key), engines."""

from __future__ import annotations

import hashlib

import redis

from mint.adapters.identity import adapter_key
from services.scheduler import EngineInfo, LoadItem

GiB = 1024**3
TENANT = "acme"  # whose waves the tests activate


class FakeClock:
    """Unix time that moves only when a test says so: heartbeat periods pass without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def key(i: int | str) -> str:
    """The adapter key of test adapter `i`: the form engines and gateways use (sha256:config digest)."""
    return adapter_key(hashlib.sha256(str(i).encode()).hexdigest(), 4, 8.0, False, ("q_proj", "v_proj"))


def item(i: int | str, size_bytes: int = 1000) -> LoadItem:
    return LoadItem(adapter_key=key(i), size_bytes=size_bytes, adapter=f"adapter-ref-{i}".encode())


def add_engine(scheduler, engine_id: str, base_model: str = "tiny", host_bytes: int = 64 * GiB) -> EngineInfo:
    info = EngineInfo(
        engine_id=engine_id,
        address=f"{engine_id}.local:7000",
        base_model=base_model,
        device_bytes=8 * GiB,
        host_bytes=host_bytes,
        disk_bytes=512 * GiB,
    )
    scheduler.register(info)
    return info
