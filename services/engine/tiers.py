"""The engine's three adapter tiers, each bounded in bytes with LRU eviction.

- `DiskCache`: adapter_model.safetensors files in a local content-addressed directory, filled from the
  catalog's blob store; verified by sha256 as they are written (or hard-linked from an in-process
  catalog's blob store, which verified them when they were published).
- `HostCache`: adapters parsed and packed for slot copies (`PackedAdapter`), in host memory, by adapter key
  (identity.py): bytes and the config they were packed with.
- `SlotPool`: which adapter (by key) occupies which device slot; slots in use by running sequences or pinned are
  never evicted.

These classes only keep books; `Residency` (residency.py) decides what moves where, and is the only
caller, under its own lock.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from mint.adapters.packing import PackedAdapter
from mint.errors import Code, MintError


class DiskCache:
    """Used by several loader threads at once: bookkeeping is under a lock, file I/O is not."""

    def __init__(self, root: str | os.PathLike, budget_bytes: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, least recently used first
        for path in sorted(self.root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime):
            self._files[path.stem] = path.stat().st_size
        self.used_bytes = sum(self._files.values())

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.safetensors"

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._files

    def __len__(self) -> int:
        return len(self._files)

    def touch(self, sha256: str) -> bool:
        """Mark a cached file recently used; False if it is not (or no longer) cached."""
        with self._lock:
            if sha256 not in self._files:
                return False
            self._files.move_to_end(sha256)
            return True

    def write(self, sha256: str, chunks: Iterable[bytes]) -> Path:
        """Store a blob, checking its hash; evicts least recently used files to stay within budget."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise MintError(Code.DATA_LOSS, f"adapter blob {sha256} arrived with sha256 {digest.hexdigest()}")
            os.replace(tmp, self.path(sha256))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._add(sha256, size)

    def link(self, sha256: str, verified: Path) -> Path | None:
        """Cache a file already verified on this filesystem (an in-process catalog's blob) by a hard link:
        no copy and no second hash. None when it cannot be linked (another filesystem): write instead."""
        try:
            os.link(verified, self.path(sha256))
        except FileExistsError:
            pass  # another loader linked or wrote the same content
        except OSError:
            return None
        return self._add(sha256, verified.stat().st_size)

    def _add(self, sha256: str, size: int) -> Path:
        with self._lock:
            if sha256 not in self._files:
                self._files[sha256] = size
                self.used_bytes += size
            self._evict(keep=sha256)
        return self.path(sha256)

    def _evict(self, keep: str) -> None:
        while self.used_bytes > self.budget_bytes and len(self._files) > 1:
            sha, size = next(iter(self._files.items()))
            if sha == keep:
                self._files.move_to_end(sha)
                continue
            del self._files[sha]
            self.used_bytes -= size
            self.path(sha).unlink(missing_ok=True)


class HostCache:
    """Packed adapters by adapter key (identity.py): the packing bakes in the config's rank and scale."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, PackedAdapter] = OrderedDict()
        self.used_bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> frozenset[str]:
        return frozenset(self._items)

    def get(self, key: str, *, touch: bool = True) -> PackedAdapter | None:
        adapter = self._items.get(key)
        if adapter is not None and touch:
            self._items.move_to_end(key)
        return adapter

    def put(self, key: str, adapter: PackedAdapter) -> None:
        if key in self._items:
            return
        self._items[key] = adapter
        self.used_bytes += adapter.nbytes
        # The newest item is last, so this never evicts what was just added.
        while self.used_bytes > self.budget_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self.used_bytes -= evicted.nbytes

    def discard(self, key: str) -> None:
        adapter = self._items.pop(key, None)
        if adapter is not None:
            self.used_bytes -= adapter.nbytes


class SlotPool:
    """Which adapter (by key) occupies which device slot; slot 0 is "no adapter" and never handed out."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._slot_of: dict[str, int] = {}
        self._owner: list[str | None] = [None] * (num_slots + 1)
        self._in_use = [0] * (num_slots + 1)
        self._pinned: set[str] = set()
        self._lru: OrderedDict[str, None] = OrderedDict()
        self.adapter_bytes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slot_of)

    def slot_of(self, key: str) -> int | None:
        return self._slot_of.get(key)

    def occupants(self) -> dict[str, int]:
        return dict(self._slot_of)

    def acquire(self, key: str) -> int:
        """Mark a resident adapter used by one more running sequence."""
        slot = self._slot_of[key]
        self._in_use[slot] += 1
        self._lru.move_to_end(key)
        return slot

    def release(self, slot: int) -> None:
        self._in_use[slot] -= 1

    def pin(self, key: str, pinned: bool) -> None:
        (self._pinned.add if pinned else self._pinned.discard)(key)

    def is_pinned(self, key: str) -> bool:
        return key in self._pinned

    def free_slot(self) -> tuple[int, str | None] | None:
        """A slot to fill: an empty one, else the least recently used evictable one (and its owner)."""
        for slot in range(1, self.num_slots + 1):
            if self._owner[slot] is None:
                return slot, None
        for key in self._lru:
            slot = self._slot_of[key]
            if self._in_use[slot] == 0 and key not in self._pinned:
                return slot, key
        return None

    def assign(self, slot: int, key: str, nbytes: int) -> None:
        previous = self._owner[slot]
        if previous is not None:
            self.remove(previous)
        self._owner[slot] = key
        self._slot_of[key] = slot
        self._lru[key] = None
        self.adapter_bytes[key] = nbytes

    def remove(self, key: str) -> int | None:
        slot = self._slot_of.get(key)
        if slot is not None:
            if self._in_use[slot]:
                raise MintError(Code.FAILED_PRECONDITION, f"adapter {key[:12]} is in use by running sequences")
            del self._slot_of[key]
            self._owner[slot] = None
            self._lru.pop(key, None)
            self.adapter_bytes.pop(key, None)
            self._pinned.discard(key)
        return slot
