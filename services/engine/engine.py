"""The engine: one resident base model, many adapters, one step loop.

Callers (gRPC handlers, the embedded gateway, the trainer's sampling client) submit requests from any
thread and read their events; a single engine thread owns the model, the KV cache and the slots, and runs
steps: plan (scheduler.py), one forward over every scheduled token with per-token adapters, sample, report.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from mint.errors import Code, MintError, invalid
from mint.models.loading import load_model
from mint.models.tokenizer import Tokenizer
from mint.runtime import compute_threads, release_workers
from services.engine.attention import PagedAttention, SeqSpan
from services.engine.config import EngineConfig
from services.engine.kv_cache import KVCache
from services.engine.lora import apply_lora
from services.engine.residency import AdapterSource, AdapterSpec, Residency
from services.engine.sampling import SamplingParams, make_generator, sample
from services.engine.scheduler import Scheduler, Step
from services.engine.sequences import Request, RequestKind, SampleEvent, check_stop, take_event
from services.engine.sequences import Sequence as Seq
from services.engine.tiers import DiskCache, HostCache

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, source: AdapterSource):
        self.config = config
        self.engine_id = config.engine_id or f"engine-{uuid.uuid4().hex[:8]}"
        self.device = torch.device(config.device)
        model = load_model(config.model_path, dtype=config.torch_dtype, device=self.device)
        self.model_config = model.config
        self.base_model = config.base_model or Path(config.model_path).name
        self.tokenizer = Tokenizer.from_dir(config.model_path)
        self.eos_ids = frozenset(self.tokenizer.eos_token_ids) | frozenset(self.model_config.eos_token_ids)
        self.max_model_len = config.max_model_len or min(self.model_config.max_position_embeddings, 4096)

        slot_bytes = _slot_bytes(model, config.max_lora_rank)
        num_slots = max(1, min(config.max_slots, config.device_budget_bytes // slot_bytes))
        self.lora = apply_lora(model, num_slots, config.max_lora_rank)
        self.model = model
        self.device_budget_bytes = num_slots * slot_bytes
        mc = self.model_config
        num_blocks = KVCache.blocks_for_budget(
            config.kv_cache_bytes, num_layers=mc.num_layers, block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim, dtype=config.torch_dtype,
        )
        self.cache = KVCache(
            num_layers=mc.num_layers, num_blocks=num_blocks, block_size=config.block_size,
            num_kv_heads=mc.num_kv_heads, head_dim=mc.head_dim, dtype=config.torch_dtype, device=self.device,
        )
        self.residency = Residency(
            self.lora, mc, DiskCache(Path(config.cache_dir) / "adapters", config.disk_budget_bytes),
            HostCache(config.host_budget_bytes), source, load_concurrency=config.load_concurrency,
        )
        self.scheduler = Scheduler(self.cache, self.residency, max_batched_tokens=config.max_batched_tokens, max_num_seqs=config.max_num_seqs)
        self._inbox: collections.deque[Request] = collections.deque()
        self._wake = threading.Event()
        self._step_lock = threading.Lock()
        self.residency.on_loaded.append(lambda _sha: self._wake.set())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generated: collections.deque[tuple[float, int]] = collections.deque()
        self.tokens_generated = 0
        self.requests_finished = 0
        self.steps = 0
        release_workers()  # the model is built: the step thread is the one to hold OpenMP workers

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name=f"{self.engine_id}-steps", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.residency.close()
        for request in list(self.scheduler.running) + list(self.scheduler.waiting) + list(self._inbox):
            request.fail(MintError(Code.UNAVAILABLE, "the engine is shutting down"))

    # --- requests (any thread) --------------------------------------------------------------------------

    def spec(self, adapter) -> AdapterSpec | None:
        """An AdapterSpec from a catalog AdapterRef message (None: the base alone); checks it fits here."""
        if adapter is None or not adapter.sha256:
            return None
        if adapter.base_model and adapter.base_model != self.base_model:
            raise invalid(f"{adapter.address} is an adapter for base {adapter.base_model!r}; this engine serves {self.base_model!r}")
        spec = AdapterSpec(
            sha256=adapter.sha256,
            address=adapter.address or adapter.sha256[:12],
            rank=adapter.rank,
            alpha=adapter.alpha,
            use_rslora=adapter.use_rslora,
            target_modules=tuple(adapter.target_modules),
        )
        self.residency.check(spec)
        return spec

    def sample(
        self, adapter: AdapterSpec | None, prompt: list[int], params: SamplingParams, request_id: str = "", *, buffered: bool = False
    ) -> Request:
        """Start generating; read `request.events` (SampleEvent…, then None) or call `collect`."""
        self._check_prompt(prompt, params.max_tokens)
        blocks_per_sample = math.ceil((len(prompt) + params.max_tokens) / self.cache.block_size)
        if blocks_per_sample * params.n > self.cache.num_blocks:
            raise MintError(Code.RESOURCE_EXHAUSTED, f"{params.n} samples of {len(prompt)} + {params.max_tokens} tokens do not fit this engine's KV cache")
        request = Request(RequestKind.SAMPLE, prompt, adapter, params, request_id, buffered)
        request.seqs.append(Seq(request, 0, list(prompt), make_generator(params, 0, self.device)))
        return self._submit(request)

    def score(self, adapter: AdapterSpec | None, tokens: Sequence[int]) -> Request:
        """Start scoring one sequence; its logprobs land in `request.prompt_logprobs` when it finishes."""
        if len(tokens) < 2:
            raise invalid("each sequence needs at least 2 tokens to score")
        self._check_prompt(list(tokens), 0)
        request = Request(RequestKind.LOGPROBS, list(tokens), adapter, None)
        request.seqs.append(Seq(request, 0, list(tokens), None))
        return self._submit(request)

    def compute_logprobs(self, adapter: AdapterSpec | None, sequences: Sequence[Sequence[int]], timeout_s: float | None = None) -> list[list[float]]:
        """logprob of each token of each sequence given the tokens before it (len - 1 values each)."""
        with self.hold():
            requests = [self.score(adapter, tokens) for tokens in sequences]
        for request in requests:
            for _ in _events(request, timeout_s):
                pass  # scoring requests report only at the end
        return [request.prompt_logprobs for request in requests]

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the step loop from planning while requests are submitted, so they share the next step."""
        with self._step_lock:
            yield

    def _check_prompt(self, prompt: list[int], max_tokens: int) -> None:
        if not prompt:
            raise invalid("the prompt is empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise invalid(f"prompt has token ids outside the vocabulary 0..{vocab - 1}")
        if len(prompt) + max_tokens > self.max_model_len:
            raise invalid(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds max_model_len {self.max_model_len}")

    def _submit(self, request: Request) -> Request:
        if self._stop.is_set():
            raise MintError(Code.UNAVAILABLE, "the engine is shutting down")
        self._inbox.append(request)
        self._wake.set()
        return request

    def cancel(self, request: Request) -> None:
        request.cancel()
        self._wake.set()

    # --- the step loop (engine thread) -------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            with self._step_lock:
                while self._inbox:
                    self.scheduler.add(self._inbox.popleft())
                self.residency.install_wanted()
                step = self.scheduler.plan()
                if step is not None:
                    self._run(step)
            if step is None:
                release_workers()  # idle: leave the cores to the process's other compute thread, if any
                self._wake.wait(0.05)
                self._wake.clear()

    def _run(self, step: Step) -> None:
        try:
            with compute_threads.working(), torch.inference_mode():
                self._execute(step)
        except Exception as err:  # a bug must fail the step's requests, not the engine
            log.exception("engine step failed")
            for request in {id(w.seq.request): w.seq.request for w in step.work}.values():
                self.scheduler.finish(request)
                request.fail(MintError(Code.INTERNAL, f"engine step failed: {err}"))

    def _execute(self, step: Step) -> None:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        spans: list[SeqSpan] = []
        for w in step.work:
            seq = w.seq
            spans.append(SeqSpan(len(ids), w.count, w.start + w.count, seq.blocks))
            ids += seq.tokens[w.start : w.start + w.count]
            positions += range(w.start, w.start + w.count)
            slots += [seq.request.slot] * w.count
        device = self.device
        self.lora.batch.set_tokens(torch.tensor(slots, dtype=torch.int64, device=device))
        hidden = self.model(
            torch.tensor(ids, dtype=torch.int64, device=device),
            torch.tensor(positions, dtype=torch.int64, device=device),
            PagedAttention(self.cache, spans),
        )
        self.steps += 1

        # Rows that need logits: the last row of each sequence now fully fed (to sample its next token),
        # and every row of a scoring request (to score the token after it).
        rows: list[int] = []
        samplers: list[tuple[Seq, int]] = []  # (sequence, index into rows)
        scorers: list[tuple[Seq, int, list[int]]] = []  # (sequence, first index into rows, targets)
        for w, span in zip(step.work, spans, strict=True):
            w.seq.num_cached += w.count
            request = w.seq.request
            if request.kind is RequestKind.LOGPROBS:
                targets = w.seq.tokens[w.start + 1 : w.start + w.count + 1]
                scorers.append((w.seq, len(rows), targets))
                rows += range(span.q_start, span.q_start + len(targets))
            elif w.completes:
                row = len(rows)
                rows.append(span.q_start + span.q_len - 1)
                samplers.append((w.seq, row))
                params = request.params
                if params.n > 1 and len(request.seqs) == 1 and not w.seq.out_tokens:
                    children = [w.seq.fork(i, make_generator(params, i, device)) for i in range(1, params.n)]
                    self.scheduler.fork(w.seq, children)
                    samplers += [(child, row) for child in children]
        if not rows:
            return
        logits = self.model.logits(hidden[torch.tensor(rows, device=device)])
        for seq, first, targets in scorers:
            if targets:
                scores = torch.log_softmax(logits[first : first + len(targets)], dim=-1)
                seq.request.prompt_logprobs += scores.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).tolist()
            if seq.pending == 0:
                self._finish(seq.request)
        if samplers:
            self._sample(logits, samplers)

    def _sample(self, logits: torch.Tensor, samplers: list[tuple[Seq, int]]) -> None:
        rows = [row for _, row in samplers]
        if rows != list(range(logits.shape[0])):  # forked samples share their parent's row
            logits = logits.index_select(0, torch.tensor(rows, device=self.device))
        tokens, logprobs = sample(logits, [s.request.params for s, _ in samplers], [s.generator for s, _ in samplers])
        now = time.monotonic()
        touched: dict[int, Request] = {}
        for (seq, _), token, logprob in zip(samplers, tokens, logprobs, strict=True):
            seq.tokens.append(token)
            seq.out_tokens.append(token)
            seq.out_logprobs.append(logprob)
            check_stop(seq, self.tokenizer, self.eos_ids, self.max_model_len)
            touched[id(seq.request)] = seq.request
        self.tokens_generated += len(samplers)
        self._generated.append((now, len(samplers)))
        while self._generated and now - self._generated[0][0] > 10.0:
            self._generated.popleft()
        for request in touched.values():
            for seq in request.seqs:
                if request.buffered and seq.finish is None:
                    continue
                event = take_event(seq, self.tokenizer, first=seq.emitted_tokens == 0)
                if event is not None:
                    request.events.put(event)
                if seq.finish is not None:
                    self.scheduler.finish_seq(seq)
            if not request.live:
                self._finish(request)

    def _finish(self, request: Request) -> None:
        self.scheduler.finish(request)
        self.requests_finished += 1
        request.events.put(None)

    # --- adapters and stats (any thread) -------------------------------------------------------------------

    def tokens_per_s(self) -> float:
        window = list(self._generated)
        if len(window) < 2:
            return 0.0
        span = window[-1][0] - window[0][0]
        return sum(n for _, n in window[1:]) / span if span > 0 else 0.0

    @property
    def queue_depth(self) -> int:
        return len(self.scheduler.waiting) + len(self._inbox)


def collect(request: Request, timeout_s: float | None = None) -> dict[int, SampleEvent]:
    """Merge a request's events into one finished event per sample index."""
    merged: dict[int, SampleEvent] = {}
    for event in _events(request, timeout_s):
        total = merged.setdefault(event.index, SampleEvent(index=event.index, token_ids=[], text="", logprobs=[]))
        total.token_ids += event.token_ids
        total.text += event.text
        total.logprobs += event.logprobs
        total.finish = event.finish or total.finish
        total.prompt_tokens = total.prompt_tokens or event.prompt_tokens
    return merged


def _events(request: Request, timeout_s: float | None) -> Iterator[SampleEvent]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            item = request.events.get(timeout=remaining)
        except queue.Empty:
            request.cancel()
            raise MintError(Code.DEADLINE_EXCEEDED, f"request {request.request_id} did not finish in time") from None
        if item is None:
            return
        if isinstance(item, MintError):
            raise item
        yield item


def _slot_bytes(model, max_rank: int) -> int:
    from mint.adapters.packing import lora_targets

    element = model.embed_tokens.weight.element_size()
    per_layer = sum((len(t.modules) * t.in_features + t.out_features) * max_rank for t in lora_targets(model.config))
    return per_layer * model.config.num_layers * element
