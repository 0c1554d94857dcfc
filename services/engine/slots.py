"""The device tier: which adapter (by key, identity.py) lives in which device slot, and the copies into the
slots' tensors (`LoRAModel.set_slot` / `clear_slot`, lora.py).

Slots are handed out lowest first; when none is free, the slot of the least recently used adapter that is
neither pinned nor used by a running sequence is reused (eviction.py, the policy every tier uses). Slot 0
is "no adapter" and never handed out. Slots are filled on the engine's step thread, between steps, so no
forward pass ever sees a slot change; every call is made under the residency's lock (residency.py).
"""

from __future__ import annotations

import heapq
import logging

from mint.adapters.packing import PackedAdapter
from mint.errors import Code, MintError
from services.engine.eviction import LRUBudget
from services.engine.lora import LoRAModel

log = logging.getLogger(__name__)


class SlotPool:
    def __init__(self, lora: LoRAModel):
        self.lora = lora
        self.num_slots = lora.num_slots
        self.policy = LRUBudget(lora.num_slots)  # each adapter takes one slot
        self._slot_of: dict[str, int] = {}
        self._owner: list[str | None] = [None] * (lora.num_slots + 1)
        self._free = list(range(1, lora.num_slots + 1))  # a heap: the lowest free slot first
        self.adapter_bytes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slot_of)

    def slot_of(self, key: str) -> int | None:
        return self._slot_of.get(key)

    def occupants(self) -> dict[str, int]:
        return dict(self._slot_of)

    def install(self, key: str, adapter: PackedAdapter) -> int:
        """Copy an adapter into a slot and return the slot; 0 when every slot is pinned or in use. When the
        copy fails the slot is left empty and the error raised: ValueError (nothing was copied) when the
        adapter does not fit the slots (`LoRAModel.refusal`)."""
        if not self._free:
            victims = self.policy.evict_for(1)
            if not victims:
                return 0
            slot = self._forget(victims[0])
            log.debug("slot %d: %s replaces %s", slot, key[:12], victims[0][:12])
        slot = heapq.heappop(self._free)
        try:
            self.lora.set_slot(slot, adapter)
        except BaseException:
            self.lora.clear_slot(slot)
            heapq.heappush(self._free, slot)
            raise
        self._owner[slot] = key
        self._slot_of[key] = slot
        self.adapter_bytes[key] = adapter.nbytes
        self.policy.add(key, 1)
        return slot

    def remove(self, key: str) -> int | None:
        """Empty the slot of `key` (FAILED_PRECONDITION while running sequences use it); the slot, or None."""
        if key not in self._slot_of:
            return None
        if self.policy.in_use(key):
            raise MintError(Code.FAILED_PRECONDITION, f"adapter {key[:12]} is in use by running sequences")
        self.policy.remove(key)
        slot = self._forget(key)
        self.lora.clear_slot(slot)
        return slot

    def _forget(self, key: str) -> int:
        """The books of an adapter leaving its slot (already out of the policy's); its slot goes back free."""
        slot = self._slot_of.pop(key)
        self._owner[slot] = None
        self.adapter_bytes.pop(key, None)
        heapq.heappush(self._free, slot)
        return slot

    def acquire(self, key: str) -> int:
        """Mark a resident adapter used by one more running sequence; its slot."""
        self.policy.acquire(key)
        return self._slot_of[key]

    def release(self, slot: int) -> None:
        owner = self._owner[slot]
        assert owner is not None, slot
        self.policy.release(owner)

    def pin(self, key: str, pinned: bool) -> None:
        self.policy.pin(key, pinned)

    def is_pinned(self, key: str) -> bool:
        return self.policy.is_pinned(key)
