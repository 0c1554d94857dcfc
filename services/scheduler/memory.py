"""The embedded scheduler: the whole contract in one process's memory, behind one lock.

It keeps the Redis backend's semantics (the same contract tests run on both) with plain structures: a
load queue per engine holds undelivered entries and pending ones (delivered, not yet acked), like a
stream with one consumer group. Expired assignments, request counts, failures and waves are swept every
hot window (on routing or reaping), so memory follows the working set, not every adapter ever routed.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from services.scheduler import placement
from services.scheduler.base import EngineInfo, EngineLoad, LiveEngine, LoadItem, Route, WaveStatus
from services.scheduler.config import SchedulerConfig
from services.scheduler.errors import no_engine, no_wave, not_registered, orphaned
from services.scheduler.waves import ItemState, distinct, summarize

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Queue:
    undelivered: collections.deque[tuple[str, LoadItem]] = dataclasses.field(
        default_factory=collections.deque
    )
    pending: dict[str, LoadItem] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Wave:
    name: str
    base_model: str
    tenant: str
    expires: float
    items: dict[str, LoadItem]
    engine_of: dict[str, str]
    state_of: dict[str, ItemState]
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    def bytes_by_engine(self) -> collections.Counter[str]:
        totals: collections.Counter[str] = collections.Counter()
        for key, engine_id in self.engine_of.items():
            totals[engine_id] += self.items[key].size_bytes
        return totals


class MemoryScheduler:
    def __init__(self, heartbeat_s: float = 1.0, clock: Callable[[], float] = time.time, **options):
        self.config = SchedulerConfig(heartbeat_s=heartbeat_s, **options)
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._engines: dict[str, EngineInfo] = {}
        self._seen: dict[str, float] = {}
        self._loads: dict[str, EngineLoad] = {}
        self._resident: dict[str, set[str]] = {}
        self._holders: dict[str, set[str]] = {}
        self._assigned: dict[str, tuple[str, float]] = {}  # adapter key -> (engine id, expiry)
        self._requests: dict[str, dict[int, int]] = {}     # adapter key -> second -> requests routed
        self._queues: dict[str, _Queue] = {}
        self._entry_ids = itertools.count(1)
        self._failures: dict[str, tuple[str, float]] = {}  # adapter key -> (reason, expiry)
        self._waves: dict[str, _Wave] = {}
        self._open: dict[tuple[str, str, str], str] = {}   # (base model, tenant, wave name) -> wave id
        self._swept_at = clock()

    def close(self) -> None:
        """Nothing to release; present so both backends are closed the same way."""

    # --- engine registry -------------------------------------------------------------------------------
    def register(self, info: EngineInfo) -> None:
        with self._lock:
            self._engines[info.engine_id] = info
            self._seen[info.engine_id] = self._clock()
            self._loads[info.engine_id] = EngineLoad()
            self._resident.setdefault(info.engine_id, set())
            queue = self._queues.setdefault(info.engine_id, _Queue())
            # A previous incarnation's loads in flight will never be acked: deliver them again.
            queue.undelivered.extend((self._next_entry_id(), item) for item in queue.pending.values())
            queue.pending.clear()
            self._queued.notify_all()

    def heartbeat(self, engine_id: str, load: EngineLoad) -> bool:
        with self._lock:
            if engine_id not in self._engines:
                return False
            self._seen[engine_id] = self._clock()
            self._loads[engine_id] = load
            return True

    def deregister(self, engine_id: str) -> None:
        with self._lock:
            if engine_id in self._engines:
                self._rehome(engine_id, *self._remove(engine_id))

    def engines(self, base_model: str | None = None) -> list[LiveEngine]:
        with self._lock:
            cutoff = self._clock() - self.config.dead_after_s
            return [
                LiveEngine(info, self._loads[engine_id], self._seen[engine_id])
                for engine_id, info in sorted(self._engines.items())
                if self._seen[engine_id] >= cutoff and base_model in (None, info.base_model)
            ]

    def reap(self) -> list[str]:
        with self._lock:
            now = self._clock()
            cutoff = now - self.config.dead_after_s
            dead = sorted(engine_id for engine_id, seen in self._seen.items() if seen < cutoff)
            removed = [(engine_id, *self._remove(engine_id)) for engine_id in dead]
            for engine_id, base_model, items in removed:
                self._rehome(engine_id, base_model, items)
            self._sweep(now)
            return dead

    # --- placement and routing -------------------------------------------------------------------------
    def set_resident(self, engine_id: str, adapter_keys: Iterable[str]) -> None:
        with self._lock:
            if engine_id not in self._engines:
                return  # its next heartbeat tells it to register again, and then it reports again
            old, new = self._resident[engine_id], set(adapter_keys)
            for key in old - new:
                self._drop_holder(key, engine_id)
            for key in new - old:
                self._holders.setdefault(key, set()).add(engine_id)
            self._resident[engine_id] = new

    def holders(self, adapter_key: str) -> list[str]:
        with self._lock:
            return sorted(self._holders.get(adapter_key, ()))

    def resident(self, engine_id: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._resident.get(engine_id, ()))

    def route(self, adapter_key: str, base_model: str, exclude: frozenset[str] = frozenset()) -> Route:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            loads = {e: self._loads[e].score for e in self._live(base_model, now) if e not in exclude}
            if not loads:
                raise no_engine(base_model, exclude)
            assigned = self._assigned.get(adapter_key)
            choice = placement.choose_route(
                adapter_key,
                loads,
                self._holders.get(adapter_key, ()),
                assigned[0] if assigned is not None and assigned[1] > now else None,
                placement.is_hot(self._count_request(adapter_key, now), self.config.hot_requests),
                self.config.load_factor,
            )
            if choice.placed:
                self._assigned[adapter_key] = (choice.engine_id, now + self.config.assignment_ttl_s)
            return Route(choice.engine_id, self._engines[choice.engine_id].address, choice.resident)

    # --- waves -----------------------------------------------------------------------------------------
    def activate_wave(self, name: str, base_model: str, items: list[LoadItem], tenant: str) -> str:
        wave_id = uuid.uuid4().hex
        items = distinct(items, wave_id)
        with self._lock:
            now = self._clock()
            live = self._live(base_model, now)
            if not live:
                raise no_engine(base_model, frozenset())
            self._open.pop((base_model, tenant, name), None)  # the wave it replaces no longer claims bytes
            plan = placement.spread(items, self._free_bytes(base_model, live))
            self._waves[wave_id] = _Wave(
                name=name,
                base_model=base_model,
                tenant=tenant,
                expires=now + self.config.wave_ttl_s,
                items={item.adapter_key: item for item in items},
                engine_of={item.adapter_key: engine_id for item, engine_id in plan},
                state_of={item.adapter_key: ItemState.QUEUED for item in items},
            )
            self._open[(base_model, tenant, name)] = wave_id
            for item, engine_id in plan:
                self._enqueue(engine_id, item)
            return wave_id

    def wave_status(self, wave_id: str, tenant: str | None) -> WaveStatus:
        with self._lock:
            wave = self._waves.get(wave_id)
            if wave is None or wave.expires <= self._clock() or tenant not in (None, wave.tenant):
                raise no_wave(wave_id, self.config.wave_ttl_s)
            live = self._live(wave.base_model, self._clock()).keys()
            return summarize(
                wave_id, wave.name, wave.engine_of, wave.state_of, wave.bytes_by_engine(), wave.reasons, live
            )

    def open_waves(self, base_model: str) -> list[tuple[str, str]]:
        with self._lock:
            now = self._clock()
            return sorted(
                (tenant, wave_id) for (base, tenant, _), wave_id in self._open.items()
                if base == base_model and wave_id in self._waves and self._waves[wave_id].expires > now
            )

    # --- load queues -----------------------------------------------------------------------------------
    def enqueue_load(self, engine_id: str, item: LoadItem) -> None:
        with self._lock:
            if engine_id not in self._engines:
                raise not_registered(engine_id)
            self._enqueue(engine_id, item)

    def next_loads(self, engine_id: str, count: int, block_s: float) -> list[tuple[str, LoadItem]]:
        deadline = time.monotonic() + block_s
        with self._queued:
            while True:
                queue = self._queues.get(engine_id)
                if queue is not None and queue.undelivered:
                    taken = [queue.undelivered.popleft() for _ in range(min(count, len(queue.undelivered)))]
                    queue.pending.update(taken)
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._queued.wait(remaining)

    def ack_load(self, engine_id: str, entry_id: str, item: LoadItem, error: str | None = None) -> None:
        with self._lock:
            queue = self._queues.get(engine_id)
            if queue is None or queue.pending.pop(entry_id, None) is None:
                return  # already re-placed (engine reaped or registered again): another entry owns the load
            if error is None:
                self._loaded(engine_id, item)
            else:
                self._failed(engine_id, item, error)

    def load_failure(self, adapter_key: str) -> str | None:
        with self._lock:
            failure = self._failures.get(adapter_key)
            return failure[0] if failure is not None and failure[1] > self._clock() else None

    # --- internals (the lock is held) ------------------------------------------------------------------
    def _live(self, base_model: str, now: float) -> dict[str, EngineInfo]:
        cutoff = now - self.config.dead_after_s
        return {
            engine_id: info
            for engine_id, info in self._engines.items()
            if info.base_model == base_model and self._seen[engine_id] >= cutoff
        }

    def _free_bytes(self, base_model: str, live: dict[str, EngineInfo]) -> dict[str, int]:
        """Host capacity left on each live engine after the bytes that open waves have placed there."""
        claimed: collections.Counter[str] = collections.Counter()
        for (base, _, _), wave_id in self._open.items():
            if base == base_model:
                claimed.update(self._waves[wave_id].bytes_by_engine())
        return {engine_id: info.host_bytes - claimed[engine_id] for engine_id, info in live.items()}

    def _remove(self, engine_id: str) -> tuple[str, list[LoadItem]]:
        """Forget an engine; returns its base and what must be loaded elsewhere: its queued loads
        (delivered or not) and the items of open waves that it held."""
        info = self._engines.pop(engine_id)
        del self._seen[engine_id], self._loads[engine_id]
        for key in self._resident.pop(engine_id):
            self._drop_holder(key, engine_id)
        queue = self._queues.pop(engine_id)
        items = list(queue.pending.values()) + [item for _, item in queue.undelivered]
        for (base, _, _), wave_id in self._open.items():
            if base == info.base_model:
                wave = self._waves[wave_id]
                items += [
                    wave.items[key]
                    for key, holder in wave.engine_of.items()
                    if holder == engine_id and wave.state_of[key] is ItemState.RESIDENT
                ]
        return info.base_model, items

    def _rehome(self, gone: str, base_model: str, items: list[LoadItem]) -> None:
        live = self._live(base_model, self._clock())
        if not live:
            for item in items:
                self._dead_letter(gone, item, orphaned(gone, base_model), failed_load=False)
            return
        for item, engine_id in placement.spread(items, self._free_bytes(base_model, live)):
            self._enqueue(engine_id, item)
            self._wave_move(item, gone, engine_id)

    def _enqueue(self, engine_id: str, item: LoadItem) -> None:
        self._queues[engine_id].undelivered.append((self._next_entry_id(), item))
        self._queued.notify_all()

    def _next_entry_id(self) -> str:
        return f"{next(self._entry_ids)}-0"

    def _loaded(self, engine_id: str, item: LoadItem) -> None:
        if engine_id in self._engines:  # hold it now rather than at the engine's next report
            self._resident[engine_id].add(item.adapter_key)
            self._holders.setdefault(item.adapter_key, set()).add(engine_id)
        self._failures.pop(item.adapter_key, None)
        wave = self._waves.get(item.wave_id)
        if wave is not None and wave.engine_of.get(item.adapter_key) == engine_id:
            wave.state_of[item.adapter_key] = ItemState.RESIDENT

    def _failed(self, engine_id: str, item: LoadItem, error: str) -> None:
        item = dataclasses.replace(item, attempts=item.attempts + 1)
        if item.attempts < self.config.max_attempts:
            base_model = self._engines[engine_id].base_model
            live = self._live(base_model, self._clock())
            others = {e: info for e, info in live.items() if e != engine_id} or live
            if others:
                [(_, target)] = placement.spread([item], self._free_bytes(base_model, others))
                self._enqueue(target, item)
                self._wave_move(item, engine_id, target)
                return
        self._dead_letter(engine_id, item, error)

    def _dead_letter(self, engine_id: str, item: LoadItem, reason: str, *, failed_load: bool = True) -> None:
        """Give up on a load. Only a load that itself failed marks the adapter failed for requesters; one
        orphaned because no engine was left says nothing about the adapter."""
        log.warning("load of %s dead-lettered (last on %s): %s", item.adapter_key, engine_id, reason)
        if failed_load:
            self._failures[item.adapter_key] = (reason, self._clock() + self.config.failure_ttl_s)
        wave = self._waves.get(item.wave_id)
        if wave is not None and wave.engine_of.get(item.adapter_key) == engine_id:
            wave.state_of[item.adapter_key] = ItemState.FAILED
            wave.reasons[item.adapter_key] = reason

    def _wave_move(self, item: LoadItem, source: str, target: str) -> None:
        wave = self._waves.get(item.wave_id)
        if wave is not None and wave.engine_of.get(item.adapter_key) == source:
            wave.engine_of[item.adapter_key] = target
            wave.state_of[item.adapter_key] = ItemState.QUEUED

    def _drop_holder(self, adapter_key: str, engine_id: str) -> None:
        holders = self._holders.get(adapter_key)
        if holders is not None:
            holders.discard(engine_id)
            if not holders:
                del self._holders[adapter_key]

    def _count_request(self, adapter_key: str, now: float) -> int:
        """Requests for the adapter in the last hot_window_s seconds, this one included (per-second
        buckets, as the Redis backend keeps them)."""
        second = int(now)
        buckets = self._requests.setdefault(adapter_key, {})
        for old in [s for s in buckets if s <= second - self.config.hot_window_s]:
            del buckets[old]
        buckets[second] = buckets.get(second, 0) + 1
        return sum(buckets.values())

    def _sweep(self, now: float) -> None:
        """Drop what has expired, at most once per hot window."""
        if now - self._swept_at < self.config.hot_window_s:
            return
        self._swept_at = now
        oldest_second = int(now) - self.config.hot_window_s
        self._assigned = {key: a for key, a in self._assigned.items() if a[1] > now}
        self._requests = {key: b for key, b in self._requests.items() if max(b) > oldest_second}
        self._failures = {key: f for key, f in self._failures.items() if f[1] > now}
        for wave_id in [w for w, wave in self._waves.items() if wave.expires <= now]:
            wave = self._waves.pop(wave_id)
            if self._open.get((wave.base_model, wave.tenant, wave.name)) == wave_id:
                del self._open[(wave.base_model, wave.tenant, wave.name)]

