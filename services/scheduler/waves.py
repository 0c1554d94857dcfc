"""An active wave's bookkeeping vocabulary, shared by both backends: item states and the status summary.

Each item of a wave is placed on one engine and is QUEUED there until that engine acks its load
(RESIDENT) or it has failed on every try (FAILED). A retry or a reaped engine moves the item to another
engine, back to QUEUED. A wave is open (its bytes count against its engines' free space when later
waves are planned) until a wave with the same name on the same base replaces it, or it expires.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from services.scheduler.base import LoadItem, WaveShare, WaveStatus

MAX_REPORTED_FAILURES = 100


class ItemState(enum.Enum):
    QUEUED = "queued"
    RESIDENT = "resident"
    FAILED = "failed"


def distinct(items: Iterable[LoadItem], wave_id: str) -> list[LoadItem]:
    """The wave's items, one per adapter (the first wins), each tagged with the wave so acks find it."""
    seen: dict[str, LoadItem] = {}
    for item in items:
        if item.adapter_key not in seen:
            seen[item.adapter_key] = LoadItem(item.adapter_key, item.size_bytes, item.adapter, wave_id=wave_id)
    return list(seen.values())


def summarize(
    wave_id: str,
    name: str,
    engine_of: Mapping[str, str],
    state_of: Mapping[str, ItemState],
    bytes_by_engine: Mapping[str, int],
    reasons: Mapping[str, str],
    live: AbstractSet[str],
) -> WaveStatus:
    """An item counts as resident only on a live engine: between an engine's death and the reaper moving
    its items, the wave must not report ready on adapters that nothing alive holds."""
    adapters: collections.Counter[str] = collections.Counter(engine_of.values())
    resident: collections.Counter[str] = collections.Counter(
        engine_of[key] for key, state in state_of.items() if state is ItemState.RESIDENT and engine_of[key] in live
    )
    failed = sorted(key for key, state in state_of.items() if state is ItemState.FAILED)
    shares = tuple(
        WaveShare(engine, adapters=n, bytes=bytes_by_engine.get(engine, 0), resident=resident[engine])
        for engine, n in sorted(adapters.items())
    )
    return WaveStatus(
        wave_id=wave_id,
        name=name,
        total=len(engine_of),
        resident=sum(resident.values()),
        failed=len(failed),
        engines=shares,
        failures=tuple(f"{key}: {reasons.get(key, 'unknown')}" for key in failed[:MAX_REPORTED_FAILURES]),
    )

