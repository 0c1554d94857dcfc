"""Where each adapter lives, and moving it there: the policy over the three tiers.

Cold loads (fetch into the disk cache, parse, pack into the host tier) run on a small thread pool, so
requests for resident adapters never wait for them. Copies into device slots happen only on the engine's
step thread, between steps (`request` / `install_wanted`), so no forward pass ever sees a slot change.
A failed load fails the requests waiting for it, with its error; a later request tries again.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from mint.adapters import AdapterConfig, load_weights
from mint.adapters.packing import pack
from mint.errors import Code, MintError, invalid
from mint.models.config import ModelConfig
from mint.runtime import serial_thread
from services.engine.lora import LoRAModel
from services.engine.tiers import DiskCache, HostCache, SlotPool

log = logging.getLogger(__name__)


class AdapterSource(Protocol):
    """Where blobs come from when they are not in the disk cache (the catalog, or a local blob store)."""

    def fetch(self, sha256: str) -> Iterable[bytes]: ...

    def local_path(self, sha256: str) -> Path | None:
        """A file on this machine already holding the verified blob, or None (then `fetch` it)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterSpec:
    """What the engine needs to know about an adapter revision (from the catalog's AdapterRef)."""

    sha256: str
    address: str
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]

    @property
    def config(self) -> AdapterConfig:
        return AdapterConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.target_modules, use_rslora=self.use_rslora)


class State(enum.Enum):
    READY = "ready"
    PENDING = "pending"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    state: State
    slot: int = 0
    error: MintError | None = None


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
        self.model_config = model_config
        self.disk, self.host = disk, host
        self.slots = SlotPool(lora.num_slots)
        self.source = source
        self.dtype = lora.model.embed_tokens.weight.dtype
        self.counters = ResidencyCounters()
        self._lock = threading.Lock()
        self._loading: dict[str, Future] = {}
        self._failed: dict[str, tuple[float, MintError]] = {}
        self._wanted: dict[str, AdapterSpec] = {}  # to copy into a slot when one is free
        self._failure_ttl = failure_ttl_s
        self.on_loaded: list = []  # callbacks (sha256) run after each cold load; the engine wakes its loop
        # Loads not yet started, by priority: ones a request waits for first, prefetches (waves) after.
        self._urgent: collections.deque[str] = collections.deque()
        self._background: collections.deque[str] = collections.deque()
        self._queued: dict[str, AdapterSpec] = {}
        self._work = threading.Condition(self._lock)
        self._closed = False
        self._workers = [
            threading.Thread(target=self._loader, name=f"adapter-load-{i}", daemon=True) for i in range(load_concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def check(self, spec: AdapterSpec) -> None:
        if spec.rank > self.lora.max_rank:
            raise invalid(f"adapter {spec.address} has rank {spec.rank}; this engine serves ranks up to {self.lora.max_rank}")

    # --- engine thread -------------------------------------------------------------------------------

    def request(self, spec: AdapterSpec) -> Readiness:
        """Where `spec` stands for a sequence about to run; copies it into a slot if it is in host memory."""
        with self._lock:
            slot = self.slots.slot_of(spec.sha256)
            if slot is not None:
                return Readiness(State.READY, slot)
            packed = self.host.get(spec.sha256)
            if packed is not None:
                slot = self._install(spec.sha256, packed)
                return Readiness(State.READY, slot) if slot else Readiness(State.PENDING)
            failure = self._failed.get(spec.sha256)
            if failure is not None and time.monotonic() - failure[0] < self._failure_ttl:
                return Readiness(State.FAILED, error=failure[1])
            self._start_load(spec, urgent=True)
            return Readiness(State.PENDING)

    def install_wanted(self) -> None:
        """Copy prefetched adapters into free (or idle) slots."""
        with self._lock:
            for sha in list(self._wanted):
                packed = self.host.get(sha)
                if packed is None:
                    if sha in self._failed or sha not in self._loading:
                        del self._wanted[sha]  # its load failed or was dropped
                elif self.slots.slot_of(sha) is not None or self._install(sha, packed):
                    del self._wanted[sha]

    def _install(self, sha256: str, packed) -> int:
        choice = self.slots.free_slot()
        if choice is None:
            return 0
        slot, evicted = choice
        self.lora.set_slot(slot, packed)
        self.slots.assign(slot, sha256, packed.nbytes)
        if evicted is not None:
            log.debug("slot %d: %s replaced %s", slot, sha256[:12], evicted[:12])
        return slot

    # --- any thread ----------------------------------------------------------------------------------

    def prefetch(self, spec: AdapterSpec, *, pin: bool = False, to_device: bool = True) -> Future:
        """Load into host memory in the background (and into a slot at the next step if `to_device`)."""
        self.check(spec)
        with self._lock:
            if pin:
                self.slots.pin(spec.sha256, True)
            if to_device and self.slots.slot_of(spec.sha256) is None:
                self._wanted[spec.sha256] = spec
            if spec.sha256 in self.host or self.slots.slot_of(spec.sha256) is not None:
                done: Future = Future()
                done.set_result(None)
                return done
            self._failed.pop(spec.sha256, None)
            return self._start_load(spec, urgent=False)

    def _start_load(self, spec: AdapterSpec, *, urgent: bool) -> Future:
        """Queue a load (under the lock); a request waiting for a queued prefetch moves it to the front."""
        future = self._loading.get(spec.sha256)
        if future is None:
            future = self._loading[spec.sha256] = Future()
            self._queued[spec.sha256] = spec
            (self._urgent if urgent else self._background).append(spec.sha256)
            self._work.notify()
        elif urgent and spec.sha256 in self._queued:
            self._urgent.append(spec.sha256)
        return future

    def _loader(self) -> None:
        serial_thread()  # a load is copies and header checks; the step thread keeps the cores
        while True:
            with self._lock:
                while not self._closed and not self._urgent and not self._background:
                    self._work.wait()
                if self._closed:
                    return
                sha = (self._urgent or self._background).popleft()
                spec = self._queued.pop(sha, None)
                future = self._loading.get(sha)
            if spec is None or future is None:
                continue  # started already (it was queued twice) or dropped
            try:
                self._load(spec)
            except MintError as err:
                future.set_exception(err)
            else:
                future.set_result(None)

    def _load(self, spec: AdapterSpec) -> None:
        start = time.perf_counter()
        try:
            path = self._on_disk(spec.sha256)
            packed = pack(load_weights(spec.config, path, self.dtype), self.model_config, self.dtype)
        except Exception as err:
            error = err if isinstance(err, MintError) else MintError(Code.INTERNAL, f"loading adapter {spec.address} failed: {err}")
            log.warning("load of %s failed: %s", spec.address, error)
            with self._lock:
                self._failed[spec.sha256] = (time.monotonic(), error)
                self._loading.pop(spec.sha256, None)
                self.counters.loads_failed += 1
            self._notify(spec.sha256)
            raise error from None
        with self._lock:
            self.host.put(spec.sha256, packed)
            self._loading.pop(spec.sha256, None)
            self.counters.loads_completed += 1
            self.counters.load_seconds.append(time.perf_counter() - start)
            del self.counters.load_seconds[:-1000]
        self._notify(spec.sha256)

    def _on_disk(self, sha256: str) -> Path:
        if self.disk.touch(sha256):
            return self.disk.path(sha256)
        local = self.source.local_path(sha256)
        if local is not None and (path := self.disk.link(sha256, local)) is not None:
            return path
        return self.disk.write(sha256, self.source.fetch(sha256))

    def _notify(self, sha256: str) -> None:
        for callback in self.on_loaded:
            callback(sha256)

    def acquire(self, sha256: str) -> int:
        with self._lock:
            return self.slots.acquire(sha256)

    def release(self, slot: int) -> None:
        with self._lock:
            self.slots.release(slot)

    def pin(self, sha256: str, pinned: bool) -> None:
        with self._lock:
            self.slots.pin(sha256, pinned)

    def evict(self, sha256: str) -> None:
        """Drop an adapter from every tier of this engine (FAILED_PRECONDITION while sequences use it)."""
        with self._lock:
            slot = self.slots.remove(sha256)
            if slot is not None:
                self.lora.clear_slot(slot)
            self.host.discard(sha256)
            self._wanted.pop(sha256, None)

    def resident(self) -> frozenset[str]:
        """Adapters this engine can serve without fetching: in a slot or in host memory."""
        with self._lock:
            return frozenset(self.slots.occupants()) | self.host.keys()

    def tier_of(self, sha256: str) -> str:
        with self._lock:
            if self.slots.slot_of(sha256) is not None:
                return "device"
            if sha256 in self._loading:
                return "loading"
            if sha256 in self.host:
                return "host"
            if sha256 in self.disk:
                return "disk"
            return "none"

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "device": (len(self.slots), sum(self.slots.adapter_bytes.values()), self.slots.occupants()),
                "host": (len(self.host), self.host.used_bytes),
                "disk": (len(self.disk), self.disk.used_bytes),
                "loading": len(self._loading),
                "pinned": {sha for sha in self.slots.occupants() if self.slots.is_pinned(sha)},
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()

