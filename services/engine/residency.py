"""Where each adapter lives, and moving it there: the policy over the three tiers.

Cold loads (fetch into the disk cache, check against the base, parse, pack into the host tier) run on a
small thread pool, so requests for resident adapters never wait for them. Copies into device slots happen
only on the engine's step thread, between steps (`request` / `install_wanted`), so no forward pass ever
sees a slot change. An adapter that cannot be loaded, or whose copy into a slot is refused, fails the
requests waiting for it with its reason; a later request tries again.

Adapters are keyed by `AdapterSpec.key` (identity.py: bytes and packing config); the disk tier, which
holds raw bytes, by sha256. Failure reasons speak of the adapter's bytes and config only: one adapter can
be published under many addresses, so each caller's error names its own (`LoadFailed.error`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import torch

from mint.adapters import AdapterConfig, BaseShapes, Limits, load_weights, validate_adapter
from mint.adapters.identity import adapter_key, blob_of
from mint.adapters.packing import PackedAdapter, pack
from mint.errors import Code, MintError, invalid
from mint.models.config import ModelConfig
from mint.names import check_sha256
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
    key: str = dataclasses.field(init=False, repr=False, compare=False)  # identity.adapter_key

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", adapter_key(self.sha256, self.rank, self.alpha, self.use_rslora, self.target_modules))

    @property
    def config(self) -> AdapterConfig:
        """INVALID_ARGUMENT when the fields are not a valid LoRA config (AdapterConfig's checks)."""
        return AdapterConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.target_modules, use_rslora=self.use_rslora)


class LoadFailed(Exception):
    """Why an adapter could not be loaded or copied into a slot: a code and a reason about its bytes and
    config, naming no address."""

    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def error(self, address: str) -> MintError:
        """The failure as the error of a caller who asked for the adapter under `address`."""
        return MintError(self.code, f"adapter {address} cannot be loaded: {self.reason}")


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
        self.model_config = model_config
        self.disk, self.host = disk, host
        self.slots = SlotPool(lora.num_slots)
        self.source = source
        self.dtype = lora.model.embed_tokens.weight.dtype
        self.counters = ResidencyCounters()
        self._base = BaseShapes(model_config.num_layers, model_config.module_shapes())
        self._limits = Limits(max_rank=lora.max_rank)
        self._lock = threading.Lock()
        self._loading: dict[str, Future] = {}
        self._failed: dict[str, tuple[float, LoadFailed]] = {}
        self._wanted: dict[str, AdapterSpec] = {}  # to copy into a slot when one is free
        self._failure_ttl = failure_ttl_s
        self.on_loaded: list = []  # callbacks (key) run after each cold load; the engine wakes its loop
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
            failure = self._failure(key)
            if failure is not None:
                return Readiness(State.FAILED, failure=failure)
            self._start_load(spec, urgent=True)
            return Readiness(State.PENDING)

    def install_wanted(self) -> None:
        """Copy prefetched adapters into free (or idle) slots."""
        with self._lock:
            for key in list(self._wanted):
                packed = self.host.get(key)
                if packed is None:
                    if key in self._failed or key not in self._loading:
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
        choice = self.slots.free_slot()
        if choice is None:
            return 0
        slot, evicted = choice
        if evicted is not None:
            self.slots.remove(evicted)
            log.debug("slot %d: %s replaces %s", slot, key[:12], evicted[:12])
        try:
            self.lora.set_slot(slot, packed)
        except Exception as err:
            self.lora.clear_slot(slot)
            if isinstance(err, ValueError):  # refused before anything was copied
                failure = LoadFailed(Code.FAILED_PRECONDITION, f"it does not fit this engine's adapter slots: {err}")
            else:
                log.exception("copying adapter %s into slot %d failed", key, slot)
                failure = LoadFailed(Code.INTERNAL, "copying it into a device slot failed (a bug; the engine logged it)")
            self.host.discard(key)
            self._record_failure(key, failure)
            raise failure from None
        self.slots.assign(slot, key, packed.nbytes)
        return slot

    # --- any thread ----------------------------------------------------------------------------------

    def prefetch(self, spec: AdapterSpec, *, pin: bool = False, to_device: bool = True) -> Future:
        """Load into host memory in the background (and into a slot at the next step if `to_device`). The
        future fails with LoadFailed; `wait` turns that into the caller's error."""
        self.check(spec)
        key = spec.key
        with self._lock:
            if pin:
                self.slots.pin(key, True)
            if to_device and self.slots.slot_of(key) is None:
                self._wanted[key] = spec
            if key in self.host or self.slots.slot_of(key) is not None:
                done: Future = Future()
                done.set_result(None)
                return done
            self._failed.pop(key, None)
            return self._start_load(spec, urgent=False)

    def wait(self, spec: AdapterSpec, future: Future, timeout_s: float | None) -> None:
        """Wait for a `prefetch`; its failure as an error naming `spec.address`."""
        try:
            future.result(timeout=timeout_s)
        except LoadFailed as failure:
            raise failure.error(spec.address) from None
        except concurrent.futures.TimeoutError:
            raise MintError(Code.DEADLINE_EXCEEDED, f"adapter {spec.address} was still loading at the deadline") from None

    def _start_load(self, spec: AdapterSpec, *, urgent: bool) -> Future:
        """Queue a load (under the lock); a request waiting for a queued prefetch moves it to the front."""
        key = spec.key
        future = self._loading.get(key)
        if future is None:
            future = self._loading[key] = Future()
            self._queued[key] = spec
            (self._urgent if urgent else self._background).append(key)
            self._work.notify()
        elif urgent and key in self._queued:
            self._urgent.append(key)
        return future

    def _failure(self, key: str) -> LoadFailed | None:
        failure = self._failed.get(key)
        if failure is not None and time.monotonic() - failure[0] < self._failure_ttl:
            return failure[1]
        return None

    def _record_failure(self, key: str, failure: LoadFailed) -> None:
        """Under the lock."""
        self._failed[key] = (time.monotonic(), failure)
        self.counters.loads_failed += 1

    def _loader(self) -> None:
        serial_thread()  # a load is copies and header checks; the step thread keeps the cores
        while True:
            with self._lock:
                while not self._closed and not self._urgent and not self._background:
                    self._work.wait()
                if self._closed:
                    return
                key = (self._urgent or self._background).popleft()
                spec = self._queued.pop(key, None)
                future = self._loading.get(key)
            if spec is None or future is None:
                continue  # started already (it was queued twice) or dropped
            try:
                self._load(spec)
            except LoadFailed as failure:
                future.set_exception(failure)
            else:
                future.set_result(None)

    def _load(self, spec: AdapterSpec) -> None:
        start = time.perf_counter()
        key = spec.key
        try:
            packed = self._packed(spec)
        except Exception as err:
            if isinstance(err, LoadFailed):
                failure = err
                log.warning("adapter %s (%s) cannot be loaded: %s", spec.address, key, failure.reason)
            else:
                log.exception("loading adapter %s (%s) failed", spec.address, key)
                failure = LoadFailed(Code.INTERNAL, "the engine failed while loading it (a bug; the engine logged it)")
            with self._lock:
                self._record_failure(key, failure)
                self._loading.pop(key, None)
            self._notify(key)
            raise failure from None
        with self._lock:
            self.host.put(key, packed)
            self._loading.pop(key, None)
            self.counters.loads_completed += 1
            self.counters.load_seconds.append(time.perf_counter() - start)
            del self.counters.load_seconds[:-1000]
        self._notify(key)

    def _packed(self, spec: AdapterSpec) -> PackedAdapter:
        """The adapter packed for slot copies, checked against this base and these slots: whatever its bytes
        and config hold, a fault is a LoadFailed with the reason (a blob may come straight from a store
        that no catalog checked, or disagree with the config it was published with)."""
        try:
            check_sha256(spec.sha256)  # before it names a file in the disk cache
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, f"it names no blob: {err.message}") from None
        try:
            config = spec.config
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, f"its config is invalid: {err.message}") from None
        try:
            path = self._on_disk(spec.sha256)
        except MintError as err:
            raise LoadFailed(err.code, f"its blob could not be fetched: {err.message}") from None
        except OSError as err:
            raise LoadFailed(Code.UNAVAILABLE, f"its blob could not be fetched: {err}") from None
        try:
            validate_adapter(config, path, self._base, self._limits)
            packed = pack(load_weights(config, path, self.dtype), self.model_config, self.dtype)
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, err.message) from None
        except OSError as err:
            raise LoadFailed(Code.UNAVAILABLE, f"its cached blob could not be read: {err}") from None
        except MemoryError:
            raise LoadFailed(Code.RESOURCE_EXHAUSTED, "the engine ran out of host memory loading it") from None
        refusal = self.lora.refusal(packed)
        if refusal is None:
            refusal = _nonfinite(packed)
        if refusal is not None:
            raise LoadFailed(Code.FAILED_PRECONDITION, refusal)
        return packed

    def _on_disk(self, sha256: str) -> Path:
        if self.disk.touch(sha256):
            return self.disk.path(sha256)
        local = self.source.local_path(sha256)
        if local is not None and (path := self.disk.link(sha256, local)) is not None:
            return path
        return self.disk.write(sha256, self.source.fetch(sha256))

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
        """Pin (or unpin) every packing of a blob this engine holds or is loading."""
        with self._lock:
            for key in self._keys_of(sha256):
                self.slots.pin(key, pinned)

    def evict(self, sha256: str) -> None:
        """Drop every packing of a blob from the device and host tiers (FAILED_PRECONDITION while
        sequences use one); the file stays in the disk cache."""
        with self._lock:
            for key in self._keys_of(sha256):
                slot = self.slots.remove(key)
                if slot is not None:
                    self.lora.clear_slot(slot)
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
        if key in self._loading:
            return Placement("loading", pinned=pinned)
        packed = self.host.get(key, touch=False)
        if packed is not None:
            return Placement("host", pinned=pinned, bytes=packed.nbytes)
        return Placement("disk" if blob_of(key) in self.disk else "none", pinned=pinned)

    def _keys_of(self, sha256: str) -> list[str]:
        """Packings of the blob in a slot, in host memory or loading (under the lock)."""
        keys = set(self.slots.occupants()) | self.host.keys() | set(self._loading)
        return sorted(key for key in keys if blob_of(key) == sha256)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "device": (len(self.slots), sum(self.slots.adapter_bytes.values()), self.slots.occupants()),
                "host": (len(self.host), self.host.used_bytes),
                "disk": (len(self.disk), self.disk.used_bytes),
                "loading": len(self._loading),
                "pinned": {key for key in self.slots.occupants() if self.slots.is_pinned(key)},
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()


def _nonfinite(packed: PackedAdapter) -> str | None:
    """Why the packed weights cannot be served: a NaN or Inf, which the file may hold or the conversion to
    the engine's dtype may make (an F32 value past float16's range). Min and max propagate NaN, and an Inf
    is one of them, so one aminmax per tensor decides."""
    for path, tensors in packed.targets.items():
        for which, tensor in zip("AB", tensors, strict=True):
            if tensor.numel() and not bool(torch.stack(torch.aminmax(tensor)).isfinite().all()):
                return f"its {path} lora_{which} weights hold NaN or Inf in {str(tensor.dtype).removeprefix('torch.')}"
    return None
