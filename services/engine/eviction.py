"""The one eviction policy of the engine's adapter tiers (disk files, packed adapters in host memory, device
slots): least recently used first, never an entry that is pinned or in use, until what the tier holds fits
its budget.

`LRUBudget` keeps only books (which keys a tier holds, their sizes in the tier's unit, recency, pins,
in-use counts) and names victims; the tier owns the things themselves and drops what it is told to. Pins
and in-use counts belong to keys, not entries: a key can be pinned or held before its tier has it (a load
that is still running), and stays so until it is unpinned or released. Not thread-safe: each tier calls it
under the lock that guards its own books.
"""

from __future__ import annotations

from collections import OrderedDict


class LRUBudget:
    def __init__(self, budget: int):
        self.budget = budget  # in the tier's unit: bytes (disk, host) or slots (device)
        self.used = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pinned: set[str] = set()
        self._in_use: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def keys(self) -> frozenset[str]:
        return frozenset(self._sizes)

    def add(self, key: str, size: int) -> None:
        """Count a new entry as the most recently used; one already held is only touched."""
        if key in self._sizes:
            self._sizes.move_to_end(key)
            return
        self._sizes[key] = size
        self.used += size

    def touch(self, key: str) -> bool:
        """Mark an entry recently used; False when the tier does not hold it."""
        if key not in self._sizes:
            return False
        self._sizes.move_to_end(key)
        return True

    def remove(self, key: str) -> int | None:
        """Forget an entry (its pin and in-use count stay with the key); its size, or None if not held."""
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used -= size
        return size

    def pin(self, key: str, pinned: bool) -> None:
        (self._pinned.add if pinned else self._pinned.discard)(key)

    def is_pinned(self, key: str) -> bool:
        return key in self._pinned

    def acquire(self, key: str) -> None:
        """One more user of `key` (a running sequence, a loader reading a file): it is not evicted until
        every user has released it."""
        self._in_use[key] = self._in_use.get(key, 0) + 1
        self.touch(key)

    def release(self, key: str) -> None:
        users = self._in_use[key] - 1
        if users:
            self._in_use[key] = users
        else:
            del self._in_use[key]

    def in_use(self, key: str) -> bool:
        return key in self._in_use

    def evict_for(self, size: int, *, keep: str | None = None) -> list[str]:
        """Remove least recently used entries, passing over pinned and in-use ones (and `keep`), until `size`
        more fits the budget, and return their keys for the tier to drop. When the evictable entries do not
        free enough, all of them go and the tier stays over budget: what is pinned or in use is never taken."""
        evicted: list[str] = []
        freed = 0
        if self.used + size <= self.budget:
            return evicted
        for key, entry in self._sizes.items():
            if key == keep or key in self._pinned or key in self._in_use:
                continue
            evicted.append(key)
            freed += entry
            if self.used - freed + size <= self.budget:
                break
        for key in evicted:
            del self._sizes[key]
        self.used -= freed
        return evicted
