"""An engine's life in a fleet: registration, heartbeats with load, the resident set, the load queue.

One background thread keeps the engine known to the scheduler (registering again whenever a heartbeat
finds it unknown, as after a Redis restart), reports which adapters (keys, identity.py) it holds when that
changes, and takes loads queued for it (waves, re-placements), acking each when its background load
finishes. A failed load is acked with its reason, which names no address: the scheduler keeps it for
everyone who asks for the same adapter. Once the engine stops serving (its step loop ended), the agent
stops heartbeating and deregisters, so no request is routed to it any more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from mint.errors import MintError
from mint.proto.common_pb2 import AdapterRef
from services.engine.engine import Engine
from services.engine.failures import LoadFailed
from services.scheduler.base import EngineInfo, EngineLoad, LoadItem, Scheduler

log = logging.getLogger(__name__)


class FleetAgent:
    def __init__(self, engine: Engine, scheduler: Scheduler, address: str):
        self.engine = engine
        self.scheduler = scheduler
        residency = engine.residency
        self.info = EngineInfo(
            engine_id=engine.engine_id,
            address=address,
            base_model=engine.base_model,
            device_bytes=engine.device_budget_bytes,
            host_bytes=residency.host.budget_bytes,
            disk_bytes=residency.disk.budget_bytes,
        )
        self._stop = threading.Event()
        # Loads finish on loader threads; the agent's own thread acks them (see _run). _in_flight counts
        # the loads started and not yet acked.
        self._finished: queue.SimpleQueue[tuple[str, LoadItem, str | None]] = queue.SimpleQueue()
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    def start(self) -> FleetAgent:
        self._thread = threading.Thread(target=self._run, name=f"{self.info.engine_id}-fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.scheduler.deregister(self.info.engine_id)
        except MintError as err:
            log.warning("could not deregister %s: %s", self.info.engine_id, err)

    def _run(self) -> None:
        reported: frozenset[str] | None = None
        registered = False
        next_beat = 0.0
        while not self._stop.is_set():
            if self.engine.failure is not None:
                self._leave()
                return
            try:
                now = time.monotonic()
                if not registered:
                    self.scheduler.register(self.info)
                    registered, reported = True, None
                if now >= next_beat:
                    engine = self.engine
                    held = engine.residency.snapshot()
                    load = EngineLoad(
                        running=engine.planner.num_running_seqs, waiting=engine.queue_depth, tokens_per_s=engine.tokens_per_s(),
                        tier_bytes=(held["device"][1], held["host"][1], held["disk"][1]),
                    )
                    if not self.scheduler.heartbeat(self.info.engine_id, load):
                        registered = False
                        continue
                    next_beat = now + self.scheduler.heartbeat_s
                # Acks, then the resident set, from this one thread: a report is never older than a load
                # acked before it (a stale report would take a fresh holder back out of the index).
                self._ack_finished(until=next_beat)
                resident = self.engine.residency.resident()
                if resident != reported:
                    self.scheduler.set_resident(self.info.engine_id, resident)
                    reported = resident
                # While loads are running, look back soon to ack them; otherwise wait until the next beat.
                block = 0.01 if self._in_flight else max(0.01, min(0.25, next_beat - time.monotonic()))
                for entry_id, item in self.scheduler.next_loads(self.info.engine_id, 16, block):
                    self._load(entry_id, item)
            except MintError as err:  # the scheduler is unreachable: keep trying, serving meanwhile
                log.warning("fleet: %s", err)
                registered = False
                self._stop.wait(self.scheduler.heartbeat_s)

    def _leave(self) -> None:
        """The engine stopped serving: no more heartbeats, and out of the registry now rather than when the
        reaper notices (if the scheduler cannot be reached, the reaper does it)."""
        log.warning("fleet: engine %s stopped serving; it leaves the fleet", self.info.engine_id)
        try:
            self.scheduler.deregister(self.info.engine_id)
        except MintError as err:
            log.warning("could not deregister %s: %s", self.info.engine_id, err)

    def _load(self, entry_id: str, item: LoadItem) -> None:
        ref = AdapterRef.FromString(item.adapter)
        reason = self.engine.refusal(ref)
        if reason is not None:
            self.scheduler.ack_load(self.info.engine_id, entry_id, item, error=reason)
            return
        future = self.engine.residency.prefetch(self.engine.spec(ref), to_device=False)

        def done(f) -> None:
            error = f.exception()
            reason = error.reason if isinstance(error, LoadFailed) else (str(error) if error else None)
            self._finished.put((entry_id, item, reason))

        self._in_flight += 1
        future.add_done_callback(done)

    def _ack_finished(self, until: float) -> None:
        """Ack finished loads until none is left or the next heartbeat is due (a long run of acks must not
        let the engine pass for dead). One that cannot be acked stays pending in the scheduler and comes
        back when the engine registers again."""
        while time.monotonic() < until:
            try:
                entry_id, item, error = self._finished.get_nowait()
            except queue.Empty:
                return
            self._in_flight -= 1
            self.scheduler.ack_load(self.info.engine_id, entry_id, item, error=error)
