"""The loader pool: a few threads that run cold adapter loads, so that requests for resident adapters never
wait for them. Loads a request waits for (urgent) start before prefetches (background: waves, LoadAdapter);
a request for an adapter whose prefetch is still queued moves it to the front. One load per adapter key at a
time: asking again for one that is queued or running gets the same future.

The pool shares the residency's lock (residency.py), so that a load's end and its adapter's arrival in the
host tier (or its failure) are one change: every method but `close` is called with that lock held, and the
load function takes it itself to record its result, then calls `done`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future

from mint.adapters.spec import AdapterSpec
from mint.runtime import serial_thread
from services.engine.failures import LoadFailed


class LoadPool:
    def __init__(self, load: Callable[[AdapterSpec], None], *, threads: int, lock: threading.Lock):
        """`load(spec)` runs on a pool thread and raises LoadFailed when the adapter cannot be loaded; the
        future of the load then fails with it."""
        self._load = load
        self._lock = lock
        self._work = threading.Condition(lock)
        self._futures: dict[str, Future] = {}  # queued or running, by adapter key
        self._queued: dict[str, AdapterSpec] = {}
        self._urgent: collections.deque[str] = collections.deque()
        self._background: collections.deque[str] = collections.deque()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"adapter-load-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def __contains__(self, key: str) -> bool:
        return key in self._futures

    def __len__(self) -> int:
        return len(self._futures)

    def keys(self) -> frozenset[str]:
        return frozenset(self._futures)

    def submit(self, spec: AdapterSpec, *, urgent: bool) -> Future:
        key = spec.key
        future = self._futures.get(key)
        if future is None:
            future = self._futures[key] = Future()
            self._queued[key] = spec
            (self._urgent if urgent else self._background).append(key)
            self._work.notify()
        elif urgent and key in self._queued:
            self._urgent.append(key)
        return future

    def done(self, key: str) -> None:
        """The load of `key` has recorded its result: a later submit starts a new one."""
        self._futures.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()

    def _run(self) -> None:
        serial_thread()  # a load is copies and header checks; the step thread keeps the cores
        while True:
            with self._lock:
                while not self._closed and not self._urgent and not self._background:
                    self._work.wait()
                if self._closed:
                    return
                key = (self._urgent or self._background).popleft()
                spec = self._queued.pop(key, None)
                future = self._futures.get(key)
            if spec is None or future is None:
                continue  # started already (it was queued twice) or dropped
            try:
                self._load(spec)
            except LoadFailed as failure:
                future.set_exception(failure)
            else:
                future.set_result(None)
