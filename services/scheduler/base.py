"""The scheduler's contract: engine registry, adapter placement and routing, active waves, load queues.

Adapters are named by their adapter key (services/engine/identity.py: blob and packing config), the
identity engines cache them under, so "resident" always means resident with the right scale. Waves belong
to the tenant that activated them.

Two backends implement `Scheduler`: `RedisScheduler` for a fleet (Redis holds only what can be rebuilt:
engines re-register and re-report what they hold after a Redis restart) and `MemoryScheduler` for the
embedded single process. The same contract tests run against both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class EngineInfo:
    engine_id: str
    address: str
    base_model: str
    device_bytes: int  # capacity of each adapter tier, in bytes
    host_bytes: int
    disk_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class EngineLoad:
    running: int = 0
    waiting: int = 0
    tokens_per_s: float = 0.0
    tier_bytes: tuple[int, int, int] = (0, 0, 0)  # bytes of adapters held in the device, host and disk tiers

    @property
    def score(self) -> float:
        """What routing balances: sequences running or queued on the engine."""
        return float(self.running + self.waiting)


@dataclasses.dataclass(frozen=True, slots=True)
class LiveEngine:
    info: EngineInfo
    load: EngineLoad
    last_seen: float  # unix time of the last heartbeat


@dataclasses.dataclass(frozen=True, slots=True)
class LoadItem:
    """One adapter to load: the scheduler needs its key and size; `adapter` (a serialized
    mint.v1.AdapterRef) is opaque to it and travels to the engine."""

    adapter_key: str
    size_bytes: int
    adapter: bytes
    wave_id: str = ""
    attempts: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    engine_id: str
    address: str
    resident: bool  # the engine already holds the adapter


@dataclasses.dataclass(frozen=True, slots=True)
class WaveShare:
    engine_id: str
    adapters: int
    bytes: int
    resident: int


@dataclasses.dataclass(frozen=True, slots=True)
class WaveStatus:
    wave_id: str
    name: str
    total: int
    resident: int
    failed: int
    engines: tuple[WaveShare, ...]
    failures: tuple[str, ...]  # "<adapter key>: <reason>", at most 100

    @property
    def ready(self) -> bool:
        return self.resident + self.failed >= self.total


class Scheduler(Protocol):
    heartbeat_s: float

    # --- engine registry -------------------------------------------------------------------------------
    def register(self, info: EngineInfo) -> None: ...

    def heartbeat(self, engine_id: str, load: EngineLoad) -> bool:
        """Refresh an engine's last-seen time and load; False if the engine is unknown (reaped, or Redis
        lost its state), in which case the engine registers again and re-reports what it holds."""
        ...

    def deregister(self, engine_id: str) -> None: ...

    def engines(self, base_model: str | None = None) -> list[LiveEngine]: ...

    def reap(self) -> list[str]:
        """Remove engines not seen for 3 heartbeat periods: drop their placements and move the loads
        queued for them (delivered or not) to live engines. Returns the removed ids."""
        ...

    # --- placement and routing -------------------------------------------------------------------------
    def set_resident(self, engine_id: str, adapter_keys: Iterable[str]) -> None:
        """The engine's complete set of resident adapters (device and host tiers) right now."""
        ...

    def holders(self, adapter_key: str) -> list[str]: ...

    def resident(self, engine_id: str) -> frozenset[str]:
        """The adapter keys the engine last reported holding (plus loads acked since); empty when unknown."""
        ...

    def route(self, adapter_key: str, base_model: str, exclude: frozenset[str] = frozenset()) -> Route:
        """The engine a request for `adapter_key` should go to: a live holder (least loaded), else the engine
        it was recently placed on (a burst of first requests is not scattered), else bounded-load
        rendezvous hashing. Hot adapters get more replicas. UNAVAILABLE when no engine serves the base."""
        ...

    # --- waves -----------------------------------------------------------------------------------------
    def activate_wave(self, name: str, base_model: str, items: list[LoadItem], tenant: str) -> str:
        """Spread the adapters over live engines by free byte capacity, enqueue their loads, return an id.
        The wave is the tenant's: it replaces the tenant's open wave of the same name on the base."""
        ...

    def wave_status(self, wave_id: str, tenant: str | None) -> WaveStatus:
        """The wave's progress. NOT_FOUND, worded as for an unknown id, when it is not `tenant`'s (None: a
        privileged caller, who may read any wave)."""
        ...

    def open_waves(self, base_model: str) -> list[tuple[str, str]]:
        """(tenant, wave id) of the base's open waves, for operators' views; an entry may name a wave that
        has just expired (wave_status then answers NOT_FOUND)."""
        ...

    # --- load queues -----------------------------------------------------------------------------------
    def enqueue_load(self, engine_id: str, item: LoadItem) -> None: ...

    def next_loads(self, engine_id: str, count: int, block_s: float) -> list[tuple[str, LoadItem]]:
        """Loads queued for this engine, as (entry id, item); each stays pending until acked."""
        ...

    def ack_load(self, engine_id: str, entry_id: str, item: LoadItem, error: str | None = None) -> None:
        """Finish a load. On error it is retried (on another engine when one exists) until it has failed
        max_attempts times; then it goes to the dead-letter stream and `load_failure` reports it. The error
        is told to every tenant who asks for the adapter, so it must name no address."""
        ...

    def load_failure(self, adapter_key: str) -> str | None:
        """Why the adapter could not be loaded anywhere (after its retries), or None."""
        ...
