"""Where adapters go: the pure decisions both scheduler backends share, so the two cannot drift.

- Rendezvous (HRW) hashing ranks engines for an adapter; the ranking depends only on the adapter and the
  engine ids, so every gateway computes the same one and an engine joining or leaving moves only the
  adapters it wins or held.
- Bounded load skips engines above `load_factor * (average load + 1)`, so a hot or unlucky engine sheds
  new adapters to the next engine in its HRW order.
- Routing prefers engines that already hold the adapter, then its recent first placement, then the
  bounded HRW choice; a hot adapter whose holders are all over the bound gets one more replica.
- Waves are packed largest first onto the engine with the most free bytes (HRW breaks ties, so
  activating the same wave again gives the same plan).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence

from services.scheduler.base import LoadItem


def hrw_score(adapter_key: str, engine_id: str) -> int:
    """Rendezvous weight of an engine for an adapter: stable across processes (unlike `hash`)."""
    digest = hashlib.blake2b(f"{adapter_key}\0{engine_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hrw_order(adapter_key: str, engine_ids: Iterable[str]) -> list[str]:
    return sorted(engine_ids, key=lambda e: (hrw_score(adapter_key, e), e), reverse=True)


def load_bound(loads: Mapping[str, float], load_factor: float) -> float:
    """The most load an engine may carry and still take new adapters; the +1 keeps an idle fleet from
    refusing everything but the least loaded engine."""
    return load_factor * (sum(loads.values()) / len(loads) + 1.0)


def bounded_hrw(adapter_key: str, loads: Mapping[str, float], load_factor: float) -> str:
    """The first engine in the adapter's HRW order whose load is within the bound. One always is: the
    least loaded engine is at most the average, which is below the bound."""
    bound = load_bound(loads, load_factor)
    return next(e for e in hrw_order(adapter_key, loads) if loads[e] <= bound)


def is_hot(requests_in_window: int, hot_requests: float) -> bool:
    return requests_in_window > hot_requests


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    engine_id: str
    resident: bool  # the engine holds the adapter already
    placed: bool    # a first placement: the caller records it so that a burst of requests follows it


def choose_route(
    adapter_key: str,
    loads: Mapping[str, float],
    holders: Collection[str],
    assigned: str | None,
    hot: bool,
    load_factor: float,
) -> Choice:
    """Where a request for `adapter_key` goes, given the candidate engines' loads (live, serving the base, not
    excluded), the engines holding the adapter, and its recent first placement if any."""
    live_holders = [e for e in holders if e in loads]
    if live_holders:
        best = min(live_holders, key=lambda e: (loads[e], e))
        if hot:
            bound = load_bound(loads, load_factor)
            if loads[best] > bound:  # the least loaded holder is over the bound, so all of them are
                for engine_id in hrw_order(adapter_key, loads):
                    if engine_id not in holders and loads[engine_id] <= bound:
                        return Choice(engine_id, resident=False, placed=False)
        return Choice(best, resident=True, placed=False)
    if assigned is not None and assigned in loads:
        return Choice(assigned, resident=False, placed=False)
    return Choice(bounded_hrw(adapter_key, loads, load_factor), resident=False, placed=True)


def spread(items: Sequence[LoadItem], free_bytes: Mapping[str, int]) -> list[tuple[LoadItem, str]]:
    """Assign each item to an engine: largest first, onto the engine with the most free bytes left.

    Greedy largest-first keeps the bytes per engine within one (small) adapter of each other when the
    engines have equal free space; ties (all engines at first) go by HRW so a re-plan is stable.
    """
    heap = [(-free, engine_id) for engine_id, free in free_bytes.items()]
    heapq.heapify(heap)
    plan: list[tuple[LoadItem, str]] = []
    for item in sorted(items, key=lambda i: (-i.size_bytes, i.adapter_key)):
        tied = [heapq.heappop(heap)]
        while heap and heap[0][0] == tied[0][0]:
            tied.append(heapq.heappop(heap))
        neg_free, engine_id = max(tied, key=lambda t: (hrw_score(item.adapter_key, t[1]), t[1]))
        for other in tied:
            if other[1] != engine_id:
                heapq.heappush(heap, other)
        heapq.heappush(heap, (neg_free + item.size_bytes, engine_id))
        plan.append((item, engine_id))
    return plan

