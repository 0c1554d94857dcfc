"""Where each adapter lives, and moving it there: the decisions over the three tiers.

The pieces each own one thing: the device slots (slots.py), the host and disk caches (tiers.py), all
bounded by one eviction policy (eviction.py); the cold load itself (loader.py), the threads that run loads
(load_pool.py), and the failures remembered (failures.py). `Residency` decides what moves where, under one
lock: cold loads (fetch into the disk cache, check against the base, parse, pack into the host tier) run on
the loader pool, so requests for resident adapters never wait for them. Copies into device slots happen
only on the engine's step thread, between steps (`request` / `install_wanted`), so no forward pass ever
sees a slot change. An adapter that cannot be loaded, or whose copy into a slot is refused, fails the
requests waiting for it with its reason; a later request tries again.

Adapters are keyed by `AdapterSpec.key` (identity.py: bytes and packing config); the disk tier, which
holds raw bytes, by sha256. Pinning an adapter keeps it in every tier: its slot, its packed copy, its file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import logging
import threading
import time
from concurrent.futures import Future

from mint.adapters.identity import blob_of
from mint.adapters.packing import PackedAdapter
from mint.adapters.spec import AdapterSpec
from mint.errors import Code, MintError, invalid
from mint.models.config import ModelConfig
from services.engine.failures import FailureCache, LoadFailed
from services.engine.load_pool import LoadPool
from services.engine.loader import AdapterLoader
from services.engine.lora import LoRAModel
from services.engine.slots import SlotPool
from services.engine.sources import AdapterSource
from services.engine.tiers import DiskCache, HostCache

log = logging.getLogger(__name__)


class State(enum.Enum):
    READY = "ready"
    PENDING = "pending"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    state: State
    slot: int = 0
    failure: LoadFailed | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """Where an adapter stands on this engine (for a blob: its best-placed packing)."""

    tier: str  # device | loading | host | disk | none
    slot: int = 0
    pinned: bool = False
    bytes: int = 0


@dataclasses.dataclass(slots=True)
class ResidencyCounters:
    loads_completed: int = 0
    loads_failed: int = 0
    load_seconds: list[float] = dataclasses.field(default_factory=list)


class Residency:
    def __init__(
        self,
        lora: LoRAModel,
        model_config: ModelConfig,
        disk: DiskCache,
        host: HostCache,
        source: AdapterSource,
        *,
        load_concurrency: int = 2,
        failure_ttl_s: float = 5.0,
    ):
        self.lora = lora
        self.disk, self.host = disk, host
        self.slots = SlotPool(lora)
        self.source = source
        self.loader = AdapterLoader(lora, model_config, disk, source)
        self.dtype = self.loader.dtype
        self.counters = ResidencyCounters()
        self._lock = threading.Lock()
        self._failures = FailureCache(failure_ttl_s)
        self._wanted: dict[str, AdapterSpec] = {}  # to copy into a slot when one is free
        self.on_loaded: list = []  # callbacks (key) run after each cold load; the engine wakes its loop
        self._loads = LoadPool(self._load, threads=load_concurrency, lock=self._lock)

    def check(self, spec: AdapterSpec) -> None:
        if spec.rank > self.lora.max_rank:
            raise invalid(f"adapter {spec.address} has rank {spec.rank}; this engine serves ranks up to {self.lora.max_rank}")

    # --- engine thread -------------------------------------------------------------------------------

    def request(self, spec: AdapterSpec) -> Readiness:
        """Where `spec` stands for a sequence about to run; copies it into a slot if it is in host memory."""
        key = spec.key
        with self._lock:
            slot = self.slots.slot_of(key)
            if slot is not None:
                return Readiness(State.READY, slot)
            packed = self.host.get(key)
            if packed is not None:
                try:
                    slot = self._install(key, packed)
                except LoadFailed as failure:
                    return Readiness(State.FAILED, failure=failure)
                return Readiness(State.READY, slot) if slot else Readiness(State.PENDING)
            failure = self._failures.get(key)
            if failure is not None:
                return Readiness(State.FAILED, failure=failure)
            self._loads.submit(spec, urgent=True)
            return Readiness(State.PENDING)

    def install_wanted(self) -> None:
        """Copy prefetched adapters into free (or idle) slots."""
        with self._lock:
            for key in list(self._wanted):
                packed = self.host.get(key)
                if packed is None:
                    if key in self._failures or key not in self._loads:
                        del self._wanted[key]  # its load failed or was dropped
                    continue
                try:
                    if self.slots.slot_of(key) is None and not self._install(key, packed):
                        continue  # no slot free now: try again at the next step
                except LoadFailed:
                    pass  # marked failed: requests for it fail with the reason
                del self._wanted[key]

    def _install(self, key: str, packed: PackedAdapter) -> int:
        """Copy into a slot (under the lock); 0 when every slot is busy. An adapter the slots refuse is
        dropped from the host tier and marked failed (LoadFailed), like a failed load."""
        try:
            return self.slots.install(key, packed)
        except Exception as err:
            if isinstance(err, ValueError):  # refused before anything was copied
                failure = LoadFailed(Code.FAILED_PRECONDITION, f"it does not fit this engine's adapter slots: {err}")
            else:
                log.exception("copying adapter %s into a slot failed", key)
                failure = LoadFailed(Code.INTERNAL, "copying it into a device slot failed (a bug; the engine logged it)")
            self.host.discard(key)
            self._record_failure(key, failure)
            raise failure from None

    # --- any thread ----------------------------------------------------------------------------------

    def prefetch(self, spec: AdapterSpec, *, pin: bool = False, to_device: bool = True) -> Future:
        """Load into host memory in the background (and into a slot at the next step if `to_device`). The
        future fails with LoadFailed; `wait` turns that into the caller's error."""
        self.check(spec)
        key = spec.key
        with self._lock:
            if pin:
                self._pin(key, True)
            if to_device and self.slots.slot_of(key) is None:
                self._wanted[key] = spec
            if key in self.host or self.slots.slot_of(key) is not None:
                done: Future = Future()
                done.set_result(None)
                return done
            self._failures.forget(key)
            return self._loads.submit(spec, urgent=False)

    def wait(self, spec: AdapterSpec, future: Future, timeout_s: float | None) -> None:
        """Wait for a `prefetch`; its failure as an error naming `spec.address`."""
        try:
            future.result(timeout=timeout_s)
        except LoadFailed as failure:
            raise failure.error(spec.address) from None
        except concurrent.futures.TimeoutError:
            raise MintError(Code.DEADLINE_EXCEEDED, f"adapter {spec.address} was still loading at the deadline") from None

    def _record_failure(self, key: str, failure: LoadFailed) -> None:
        """Under the lock."""
        self._failures.record(key, failure)
        self.counters.loads_failed += 1

    def _load(self, spec: AdapterSpec) -> None:
        """One cold load, on a loader thread: into the host tier, or marked failed."""
        start = time.perf_counter()
        key = spec.key
        try:
            packed = self.loader.packed(spec)
        except Exception as err:
            if isinstance(err, LoadFailed):
                failure = err
                log.warning("adapter %s (%s) cannot be loaded: %s", spec.address, key, failure.reason)
            else:
                log.exception("loading adapter %s (%s) failed", spec.address, key)
                failure = LoadFailed(Code.INTERNAL, "the engine failed while loading it (a bug; the engine logged it)")
            with self._lock:
                self._record_failure(key, failure)
                self._loads.done(key)
            self._notify(key)
            raise failure from None
        with self._lock:
            self.host.put(key, packed)
            self._loads.done(key)
            self.counters.loads_completed += 1
            self.counters.load_seconds.append(time.perf_counter() - start)
            del self.counters.load_seconds[:-1000]
        self._notify(key)

    def _notify(self, key: str) -> None:
        for callback in self.on_loaded:
            callback(key)

    def acquire(self, key: str) -> int:
        with self._lock:
            return self.slots.acquire(key)

    def release(self, slot: int) -> None:
        with self._lock:
            self.slots.release(slot)

    def pin(self, sha256: str, pinned: bool) -> None:
        """Pin (or unpin) every packing of a blob this engine holds or is loading, and the blob's file."""
        with self._lock:
            for key in self._keys_of(sha256):
                self._pin(key, pinned)

    def _pin(self, key: str, pinned: bool) -> None:
        """In every tier (under the lock): its slot, its packed copy, its blob's file."""
        self.slots.pin(key, pinned)
        self.host.pin(key, pinned)
        self.disk.pin(blob_of(key), pinned)

    def evict(self, sha256: str) -> None:
        """Unpin every packing of a blob and drop it from the device and host tiers (FAILED_PRECONDITION
        while sequences use one); the file stays in the disk cache."""
        with self._lock:
            for key in self._keys_of(sha256):
                self.slots.remove(key)
                self._pin(key, False)
                self.host.discard(key)
                self._wanted.pop(key, None)

    def resident(self) -> frozenset[str]:
        """Adapters (keys) this engine can serve without fetching: in a slot or in host memory."""
        with self._lock:
            return frozenset(self.slots.occupants()) | self.host.keys()

    def tier_of(self, key: str) -> str:
        return self.placement(key).tier

    def placement(self, key: str) -> Placement:
        with self._lock:
            return self._placement(key)

    def blob_placement(self, sha256: str) -> Placement:
        """The best-placed packing of a blob (device, then loading, then host), else the disk cache's view."""
        order = ("device", "loading", "host")
        with self._lock:
            placements = [self._placement(key) for key in self._keys_of(sha256)]
            if placements:
                return min(placements, key=lambda p: order.index(p.tier))
            return Placement("disk" if sha256 in self.disk else "none")

    def _placement(self, key: str) -> Placement:
        slot = self.slots.slot_of(key)
        pinned = self.slots.is_pinned(key)
        if slot is not None:
            return Placement("device", slot, pinned, self.slots.adapter_bytes.get(key, 0))
        if key in self._loads:
            return Placement("loading", pinned=pinned)
        packed = self.host.get(key, touch=False)
        if packed is not None:
            return Placement("host", pinned=pinned, bytes=packed.nbytes)
        return Placement("disk" if blob_of(key) in self.disk else "none", pinned=pinned)

    def _keys_of(self, sha256: str) -> list[str]:
        """Packings of the blob in a slot, in host memory or loading (under the lock)."""
        keys = set(self.slots.occupants()) | self.host.keys() | self._loads.keys()
        return sorted(key for key in keys if blob_of(key) == sha256)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "device": (len(self.slots), sum(self.slots.adapter_bytes.values()), self.slots.occupants()),
                "host": (len(self.host), self.host.used_bytes),
                "disk": (len(self.disk), self.disk.used_bytes),
                "loading": len(self._loads),
                "pinned": {key for key in self.slots.occupants() if self.slots.is_pinned(key)},
            }

    def close(self) -> None:
        self._loads.close()
