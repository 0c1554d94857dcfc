"""The engine's host and disk adapter tiers (the device tier is slots.py), each bounded in bytes by the
engine's one eviction policy (eviction.py: least recently used first, never pinned or in use).

- `DiskCache`: adapter_model.safetensors files in a local content-addressed directory, filled from the
  catalog's blob store; verified by sha256 as they are written (or hard-linked from an in-process
  catalog's blob store, which verified them when they were published). Keyed by sha256: it holds bytes.
- `HostCache`: adapters parsed and packed for slot copies (`PackedAdapter`), in host memory, by adapter key
  (identity.py): bytes and the config they were packed with.

Each keeps the things and drops what its policy names; what moves where is decided by `Residency`
(residency.py). The host tier is called under the residency's lock; the disk tier, which several loader
threads use at once, keeps its books under its own lock and does file I/O outside it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from mint.adapters.packing import PackedAdapter
from mint.errors import Code, MintError
from services.engine.eviction import LRUBudget


class ByteTier:
    """What both tiers share: their books in the eviction policy, in bytes, by key (sha256 on disk)."""

    def __init__(self, budget_bytes: int):
        self.policy = LRUBudget(budget_bytes)

    @property
    def budget_bytes(self) -> int:
        return self.policy.budget

    @property
    def used_bytes(self) -> int:
        return self.policy.used

    def __contains__(self, key: str) -> bool:
        return key in self.policy

    def __len__(self) -> int:
        return len(self.policy)

    def keys(self) -> frozenset[str]:
        return self.policy.keys()


class DiskCache(ByteTier):
    def __init__(self, root: str | os.PathLike, budget_bytes: int):
        super().__init__(budget_bytes)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for path in sorted(self.root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime):
            self.policy.add(path.stem, path.stat().st_size)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.safetensors"

    def touch(self, sha256: str) -> bool:
        """Mark a cached file recently used; False if it is not (or no longer) cached."""
        with self._lock:
            return self.policy.touch(sha256)

    def acquire(self, sha256: str) -> None:
        """Keep a blob's file from eviction while it is read (whether or not it is cached yet) until `release`."""
        with self._lock:
            self.policy.acquire(sha256)

    def release(self, sha256: str) -> None:
        with self._lock:
            self.policy.release(sha256)

    def pin(self, sha256: str, pinned: bool) -> None:
        with self._lock:
            self.policy.pin(sha256, pinned)

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
            self.policy.add(sha256, size)
            for evicted in self.policy.evict_for(0, keep=sha256):
                self.path(evicted).unlink(missing_ok=True)
        return self.path(sha256)


class HostCache(ByteTier):
    """Packed adapters by adapter key (identity.py): the packing bakes in the config's rank and scale."""

    def __init__(self, budget_bytes: int):
        super().__init__(budget_bytes)
        self._items: dict[str, PackedAdapter] = {}

    def get(self, key: str, *, touch: bool = True) -> PackedAdapter | None:
        adapter = self._items.get(key)
        if adapter is not None and touch:
            self.policy.touch(key)
        return adapter

    def put(self, key: str, adapter: PackedAdapter) -> None:
        if key in self._items:
            return
        for evicted in self.policy.evict_for(adapter.nbytes):
            del self._items[evicted]
        self._items[key] = adapter
        self.policy.add(key, adapter.nbytes)

    def discard(self, key: str) -> None:
        if self._items.pop(key, None) is not None:
            self.policy.remove(key)

    def pin(self, key: str, pinned: bool) -> None:
        self.policy.pin(key, pinned)
