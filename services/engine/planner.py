"""The engine's step planner (continuous batching): which sequences feed which tokens into the next step.

Each step has a token budget. Running sequences go first (a decode is one token; an unfinished prefill
continues in chunks), then waiting requests in arrival order, as long as their adapter is in a slot and the
KV cache has room for their prompt. A request whose adapter is still loading is skipped, not waited on, so
it never holds up the requests behind it. When the cache runs out mid-decode, the youngest request is
preempted: its blocks are freed and it is recomputed later, outputs kept.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from services.engine.kv_cache import KVCache
from services.engine.residency import Residency, State
from services.engine.sequences import Request, SequenceState


@dataclasses.dataclass(slots=True)
class Work:
    """One sequence's share of a step: feed tokens[start : start + count]."""

    seq: SequenceState
    start: int
    count: int

    @property
    def completes(self) -> bool:
        return self.start + self.count == len(self.seq.tokens)


@dataclasses.dataclass(slots=True)
class Step:
    work: list[Work]
    num_tokens: int


class StepPlanner:
    def __init__(self, cache: KVCache, residency: Residency, *, max_batched_tokens: int, max_num_seqs: int):
        self.cache = cache
        self.residency = residency
        self.max_batched_tokens = max_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.preemptions = 0

    @property
    def num_running_seqs(self) -> int:
        return sum(len(r.live) for r in self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def plan(self) -> Step | None:
        budget = self.max_batched_tokens
        work: list[Work] = []
        for request in list(self.running):
            if not request.admitted:  # preempted earlier in this loop
                continue
            if request.cancelled.is_set():
                self.finish(request)
                request.abort()
                continue
            for seq in request.live:
                count = min(seq.pending, budget)
                if count == 0:
                    continue
                while not self._reserve(seq, count):
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is request:
                        break
                if not request.admitted:
                    break
                work.append(Work(seq, seq.num_cached, count))
                budget -= count
        self._admit(work, budget)
        if not work:
            return None
        work.sort(key=lambda w: w.seq.request.slot)  # adjacent slots make the LoRA ops' segment runs
        return Step(work=work, num_tokens=sum(w.count for w in work))

    def _admit(self, work: list[Work], budget: int) -> None:
        running_seqs = self.num_running_seqs  # counted once: admitting is linear in the waiting requests
        for request in list(self.waiting):
            if budget == 0:
                return
            if request.cancelled.is_set():
                self.waiting.remove(request)
                self.finish(request)
                request.abort()
                continue
            if running_seqs + len(request.live) > self.max_num_seqs:
                return
            slot = 0
            if request.adapter is not None:
                readiness = self.residency.request(request.adapter)
                if readiness.state is State.PENDING:
                    continue
                if readiness.state is State.FAILED:
                    assert readiness.failure is not None
                    self.waiting.remove(request)
                    request.fail(readiness.failure.error(request.adapter.address))
                    continue
                slot = readiness.slot
            # Room for every pending token of the request, plus one block per sequence to grow into.
            needed = sum(self._blocks_needed(s, s.pending) for s in request.live) + len(request.live)
            if needed > self.cache.allocator.num_free:
                return  # first come, first served for memory: no overtaking by smaller requests
            self.waiting.remove(request)
            request.slot = self.residency.acquire(request.adapter.key) if request.adapter else slot
            request.admitted = True
            self.running.append(request)
            running_seqs += len(request.live)
            for seq in request.live:
                count = min(seq.pending, budget)
                if count == 0:
                    break
                reserved = self._reserve(seq, count)
                assert reserved
                work.append(Work(seq, seq.num_cached, count))
                budget -= count

    def _blocks_needed(self, seq: SequenceState, count: int) -> int:
        size = self.cache.block_size
        last = (seq.num_cached + count - 1) // size
        need = max(0, last + 1 - len(seq.blocks))
        first = seq.num_cached // size
        if first < len(seq.blocks) and self.cache.allocator.refs(seq.blocks[first]) > 1:
            need += 1  # copy-on-write of a shared, partly filled block
        return need

    def _reserve(self, seq: SequenceState, count: int) -> bool:
        """Blocks for positions num_cached .. num_cached+count-1, copying a shared block before writing."""
        allocator = self.cache.allocator
        if self._blocks_needed(seq, count) > allocator.num_free:
            return False
        size = self.cache.block_size
        first = seq.num_cached // size
        if first < len(seq.blocks) and allocator.refs(seq.blocks[first]) > 1:
            fresh = allocator.allocate()
            self.cache.copy_block(seq.blocks[first], fresh, seq.num_cached % size)
            allocator.free(seq.blocks[first])
            seq.blocks[first] = fresh
        while len(seq.blocks) <= (seq.num_cached + count - 1) // size:
            seq.blocks.append(allocator.allocate())
        return True

    def _preempt(self, request: Request) -> None:
        for seq in request.seqs:
            self._free_blocks(seq)
            seq.num_cached = 0
        self._release(request)
        self.running.remove(request)
        self.waiting.appendleft(request)
        self.preemptions += 1

    def _free_blocks(self, seq: SequenceState) -> None:
        for block in seq.blocks:
            self.cache.allocator.free(block)
        seq.blocks = []

    def _release(self, request: Request) -> None:
        if request.admitted and request.adapter is not None:
            self.residency.release(request.slot)
        request.admitted = False
        request.slot = 0

    def fork(self, seq: SequenceState, children: list[SequenceState]) -> None:
        """Children share every block of `seq` (the prompt); each copies the last one before writing."""
        for child in children:
            for block in child.blocks:
                self.cache.allocator.share(block)
        seq.request.seqs.extend(children)

    def finish_seq(self, seq: SequenceState) -> None:
        self._free_blocks(seq)

    def finish(self, request: Request) -> None:
        """Free everything the request holds."""
        for seq in request.seqs:
            self._free_blocks(seq)
        self._release(request)
        if request in self.running:
            self.running.remove(request)
        request.done = True
