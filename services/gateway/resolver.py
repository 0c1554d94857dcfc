"""Resolving `policy@alias|N` for the gateway, with a cache that policy-change notices invalidate.

Entries are keyed by (API key, ref): the catalog decides what a key may see, so a cached answer is only
ever reused for the key it was given to. They expire after a short TTL as well, because notices travel
over lossy pub/sub.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mint.bus import EVERY_POLICY
from mint.proto import catalog_pb2


class ResolveCache:
    def __init__(self, resolve: Callable[[str, str], catalog_pb2.ResolveResponse], ttl_s: float = 30.0, max_entries: int = 100_000):
        """`resolve(ref, api_key)` asks the catalog."""
        self._resolve = resolve
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[tuple[str, str], tuple[float, catalog_pb2.ResolveResponse]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def resolve(self, ref: str, api_key: str) -> catalog_pb2.ResolveResponse:
        key = (api_key, ref)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                self.hits += 1
                return hit[1]
        answer = self._resolve(ref, api_key)
        with self._lock:
            self.misses += 1
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (now + self._ttl, answer)
        return answer

    def invalidate(self, policy: str) -> None:
        """Forget every cached answer about `policy` (a full tenant/name), or everything for EVERY_POLICY."""
        with self._lock:
            if policy == EVERY_POLICY:
                self._entries.clear()
                return
            stale = [key for key, (_, answer) in self._entries.items() if answer.revision.policy == policy]
            for key in stale:
                del self._entries[key]
