"""The engine: one resident base model, many adapters, one step loop.

Callers (gRPC handlers, the embedded gateway, the trainer's sampling client) submit requests from any
thread and read their events; a single engine thread owns the model, the KV cache and the slots, and runs
steps: plan (planner.py), one forward over every scheduled token with per-token adapters, sample, report.
Adapters reach their slots through the residency (residency.py). A base without tokenizer.json is served
by token ids; calls that carry text need `text_tokenizer`, which names the missing file.

A request is checked before it joins a step (prompt, parameters, adapter config), and what one request or
adapter can still cause inside a step (an adapter the slots refuse, logits its weights drive to NaN, a
failure sampling one row) fails that request alone. A failure no request can be blamed for fails the
step's requests, and the loop goes on. Should the loop thread end anyway, the engine stops serving
(`serving`, `on_failure`): every waiting request and every later one fails UNAVAILABLE, gRPC health says
NOT_SERVING (main.py) and the fleet agent stops heartbeating (fleet.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from mint.adapters import AdapterConfig
from mint.adapters.spec import AdapterSpec
from mint.errors import Code, MintError, invalid
from mint.models.loading import load_model
from mint.models.tokenizer import Tokenizer, no_tokenizer
from mint.names import check_sha256
from mint.runtime import compute_threads, release_workers
from services.engine.attention import PagedAttention, SeqSpan
from services.engine.config import EngineConfig
from services.engine.kv_cache import KVCache
from services.engine.lora import apply_lora
from services.engine.planner import Step, StepPlanner
from services.engine.residency import Residency
from services.engine.sampling import SamplingParams, make_generator, sample
from services.engine.sequences import Request, RequestKind, SampleEvent, SequenceState, check_stop, take_event
from services.engine.sources import AdapterSource
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
        # A base without tokenizer.json serves token prompts; text needs `text_tokenizer`.
        self.tokenizer = Tokenizer.from_dir_if_present(config.model_path)
        tokenizer_eos = self.tokenizer.eos_token_ids if self.tokenizer is not None else ()
        self.eos_ids = frozenset(tokenizer_eos) | frozenset(self.model_config.eos_token_ids)
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
        self.planner = StepPlanner(self.cache, self.residency, max_batched_tokens=config.max_batched_tokens, max_num_seqs=config.max_num_seqs)
        self._inbox: collections.deque[Request] = collections.deque()
        self._inbox_lock = threading.Lock()  # submitting vs. the loop's death draining the inbox
        self._wake = threading.Event()
        self._step_lock = threading.Lock()
        self.residency.on_loaded.append(lambda _key: self._wake.set())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # what ended the step loop, if it ended on its own
        self._failure_callbacks: list[Callable[[], None]] = []
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
        for request in list(self.planner.running) + list(self.planner.waiting) + list(self._inbox):
            request.fail(MintError(Code.UNAVAILABLE, "the engine is shutting down"))

    @property
    def serving(self) -> bool:
        """The step loop is running: requests submitted now will be served."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self.failure is None and not self._stop.is_set()

    def on_failure(self, callback: Callable[[], None]) -> None:
        """Run `callback` (once, on the loop's thread) if the step loop ends on its own; now if it has."""
        with self._inbox_lock:
            if self.failure is None:
                self._failure_callbacks.append(callback)
                return
        callback()

    # --- requests (any thread) --------------------------------------------------------------------------

    def spec(self, adapter) -> AdapterSpec | None:
        """An AdapterSpec from a catalog AdapterRef message (None: the base alone); INVALID_ARGUMENT naming
        the adapter and the reason when this engine cannot serve it (`refusal`)."""
        if adapter is None or not adapter.sha256:
            return None
        address = adapter.address or adapter.sha256[:12]
        reason = self.refusal(adapter)
        if reason is not None:
            raise invalid(f"adapter {address} cannot be served here: {reason}")
        return AdapterSpec(
            sha256=adapter.sha256,
            address=address,
            rank=adapter.rank,
            alpha=adapter.alpha,
            use_rslora=adapter.use_rslora,
            target_modules=tuple(adapter.target_modules),
        )

    def refusal(self, adapter) -> str | None:
        """Why this engine cannot serve an AdapterRef, or None. The reason names no address: the same
        adapter may be published under several (the fleet agent reports it to the scheduler as it is)."""
        try:
            check_sha256(adapter.sha256)
        except MintError as err:
            return f"it names no blob: {err.message}"
        if adapter.base_model and adapter.base_model != self.base_model:
            return f"it is an adapter for base {adapter.base_model!r}; this engine serves {self.base_model!r}"
        if adapter.rank > self.lora.max_rank:
            return f"it has rank {adapter.rank}; this engine serves ranks up to {self.lora.max_rank}"
        try:
            AdapterConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=tuple(adapter.target_modules), use_rslora=adapter.use_rslora)
        except MintError as err:
            return f"its config is invalid: {err.message}"
        return None

    def sample(
        self, adapter: AdapterSpec | None, prompt: list[int], params: SamplingParams, request_id: str = "", *, buffered: bool = False
    ) -> Request:
        """Start generating; read `request.events` (SampleEvent…, then None) or call `collect`."""
        self._check_params(params)
        self._check_prompt(prompt, params.max_tokens)
        blocks_per_sample = math.ceil((len(prompt) + params.max_tokens) / self.cache.block_size)
        if blocks_per_sample * params.n > self.cache.num_blocks:
            raise MintError(Code.RESOURCE_EXHAUSTED, f"{params.n} samples of {len(prompt)} + {params.max_tokens} tokens do not fit this engine's KV cache")
        request = Request(RequestKind.SAMPLE, prompt, adapter, params, request_id, buffered)
        request.seqs.append(SequenceState(request, 0, list(prompt), make_generator(params, 0, self.device)))
        return self._submit(request)

    def score(self, adapter: AdapterSpec | None, tokens: Sequence[int]) -> Request:
        """Start scoring one sequence; its logprobs land in `request.prompt_logprobs` when it finishes."""
        if len(tokens) < 2:
            raise invalid("each sequence needs at least 2 tokens to score")
        self._check_prompt(list(tokens), 0)
        request = Request(RequestKind.LOGPROBS, list(tokens), adapter, None)
        request.seqs.append(SequenceState(request, 0, list(tokens), None))
        return self._submit(request)

    def compute_logprobs(self, adapter: AdapterSpec | None, sequences: Sequence[Sequence[int]], timeout_s: float | None = None) -> list[list[float]]:
        """logprob of each token of each sequence given the tokens before it (len - 1 values each)."""
        with self.hold():
            requests = [self.score(adapter, tokens) for tokens in sequences]
        for request in requests:
            for _ in _events(request, timeout_s):
                pass  # scoring requests report only at the end
        return [request.prompt_logprobs for request in requests]

    def text_tokenizer(self) -> Tokenizer:
        """The base's tokenizer, for calls that carry text (text and chat prompts, stop strings);
        FAILED_PRECONDITION naming the missing file when the base ships none."""
        if self.tokenizer is None:
            raise no_tokenizer(self.base_model, self.config.model_path)
        return self.tokenizer

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the step loop from planning while requests are submitted, so they share the next step."""
        with self._step_lock:
            yield

    def _check_params(self, params: SamplingParams) -> None:
        """The checks of a request's parameters (SamplingParams.from_proto), for callers in this process that
        build SamplingParams themselves: a value the step cannot sample with never joins one."""
        try:
            message = params.to_proto()
        except (TypeError, ValueError) as err:  # not a number, or past its field's range (seed: int64)
            fields = [f.name for f in dataclasses.fields(params) if not _encodes(dataclasses.replace(SamplingParams(), **{f.name: getattr(params, f.name)}))]
            raise invalid(f"sampling parameters {', '.join(fields) or '?'} do not fit their message fields: {err}") from None
        SamplingParams.from_proto(message, max_model_len=self.max_model_len, vocab_size=self.model_config.vocab_size)
        if params.stop:
            self.text_tokenizer()  # stop strings are matched in the decoded text

    def _check_prompt(self, prompt: list[int], max_tokens: int) -> None:
        if not prompt:
            raise invalid("the prompt is empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise invalid(f"prompt has token ids outside the vocabulary 0..{vocab - 1}")
        if len(prompt) + max_tokens > self.max_model_len:
            raise invalid(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds max_model_len {self.max_model_len}")

    def _submit(self, request: Request) -> Request:
        with self._inbox_lock:
            if self._stop.is_set():
                raise MintError(Code.UNAVAILABLE, "the engine is shutting down")
            if self.failure is not None:
                raise self._stopped()
            self._inbox.append(request)
        self._wake.set()
        return request

    def _stopped(self) -> MintError:
        return MintError(Code.UNAVAILABLE, f"engine {self.engine_id} stopped serving (its step loop ended); another engine can take the request")

    def cancel(self, request: Request) -> None:
        request.cancel()
        self._wake.set()

    # --- the step loop (engine thread) -------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            torch.set_grad_enabled(False)
            while not self._stop.is_set():
                step = None
                with self._step_lock:
                    try:
                        step = self._step()
                    except Exception:  # a bug no request can be blamed for: drop what the loop holds, go on
                        log.exception("engine %s: planning a step failed", self.engine_id)
                        self._fail_all(MintError(Code.INTERNAL, f"engine {self.engine_id} failed while planning a step (a bug; the engine logged it)"))
                if step is None:
                    release_workers()  # idle: leave the cores to the process's other compute thread, if any
                    self._wake.wait(0.05)
                    self._wake.clear()
        except BaseException as err:  # whatever ends the loop, the engine must say that it stopped serving
            self._died(err)

    def _step(self) -> Step | None:
        while self._inbox:
            self.planner.add(self._inbox.popleft())
        self.residency.install_wanted()
        step = self.planner.plan()
        if step is not None:
            self._run(step)
        return step

    def _died(self, err: BaseException) -> None:
        log.critical("engine %s: the step loop ended; the engine stops serving", self.engine_id, exc_info=err)
        with self._inbox_lock:
            self.failure = err
            callbacks, self._failure_callbacks = self._failure_callbacks, []
        self._fail_all(self._stopped())
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("engine %s: a stop callback failed", self.engine_id)

    def _fail_all(self, error: MintError) -> None:
        """Fail every request the engine holds and free what they hold."""
        with self._inbox_lock:
            inbox = list(self._inbox)
            self._inbox.clear()
        held = list(self.planner.running) + list(self.planner.waiting) + inbox
        self.planner.waiting.clear()
        for request in held:
            self._fail(request, error)

    def _fail(self, request: Request, error: MintError) -> None:
        if request.done:
            return
        self.planner.finish(request)
        request.fail(error)

    def _run(self, step: Step) -> None:
        try:
            with compute_threads.working(), torch.inference_mode():
                self._execute(step)
        except Exception:  # the forward pass failed: no one request can be blamed, so the step's all fail
            log.exception("engine %s: a step of %d tokens failed", self.engine_id, step.num_tokens)
            error = MintError(Code.INTERNAL, f"engine {self.engine_id} failed a step (a bug; the engine logged it)")
            for request in {id(w.seq.request): w.seq.request for w in step.work}.values():
                self._fail(request, error)

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
        owners: list[Request] = []  # the request of each row
        samplers: list[tuple[SequenceState, int]] = []  # (sequence, index into rows)
        scorers: list[tuple[SequenceState, int, list[int]]] = []  # (sequence, first index into rows, targets)
        for w, span in zip(step.work, spans, strict=True):
            w.seq.num_cached += w.count
            request = w.seq.request
            if request.kind is RequestKind.LOGPROBS:
                targets = w.seq.tokens[w.start + 1 : w.start + w.count + 1]
                scorers.append((w.seq, len(rows), targets))
                rows += range(span.q_start, span.q_start + len(targets))
                owners += [request] * len(targets)
            elif w.completes:
                row = len(rows)
                rows.append(span.q_start + span.q_len - 1)
                owners.append(request)
                samplers.append((w.seq, row))
                params = request.params
                if params.n > 1 and len(request.seqs) == 1 and not w.seq.out_tokens:
                    children = [w.seq.fork(i, make_generator(params, i, device)) for i in range(1, params.n)]
                    self.planner.fork(w.seq, children)
                    samplers += [(child, row) for child in children]
        if not rows:
            return
        logits = self.model.logits(hidden[torch.tensor(rows, device=device)])
        failed = self._fail_nonfinite(logits, owners)
        if failed:
            scorers = [s for s in scorers if s[0].request not in failed]
            samplers = [s for s in samplers if s[0].request not in failed]
        for seq, first, targets in scorers:
            if targets:
                scores = torch.log_softmax(logits[first : first + len(targets)], dim=-1)
                seq.request.prompt_logprobs += scores.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).tolist()
            if seq.pending == 0:
                self._finish(seq.request)
        if samplers:
            self._sample(logits, samplers)

    def _fail_nonfinite(self, logits: torch.Tensor, owners: list[Request]) -> set[Request]:
        """Fail the requests with a row of NaN or Inf logits. With an adapter, its weights drove the
        activations past the engine's dtype (finite weights can, in float16): the adapter's fault, told to the
        client. Without one the base model did, which is the engine's."""
        finite = torch.isfinite(logits).all(dim=-1)
        if bool(finite.all()):
            return set()
        failed = {owners[row] for row in (~finite).nonzero().flatten().tolist()}
        dtype = str(self.config.torch_dtype).removeprefix("torch.")
        for request in failed:
            if request.adapter is not None:
                error = MintError(
                    Code.FAILED_PRECONDITION,
                    f"adapter {request.adapter.address} drives this prompt's activations to NaN or Inf in {dtype}: its weights are too large to serve",
                )
            else:
                log.error("engine %s: the base model gave non-finite logits for request %s", self.engine_id, request.request_id)
                error = MintError(Code.INTERNAL, f"the base model gave non-finite logits on engine {self.engine_id} (the engine logged it)")
            self._fail(request, error)
        return failed

    def _sample(self, logits: torch.Tensor, samplers: list[tuple[SequenceState, int]]) -> None:
        rows = [row for _, row in samplers]
        if rows != list(range(logits.shape[0])):  # forked samples share their parent's row
            logits = logits.index_select(0, torch.tensor(rows, device=self.device))
        tokens, logprobs, top, errors = sample(logits, [s.request.params for s, _ in samplers], [s.generator for s, _ in samplers])
        for row, err in errors.items():  # a bug, but one row's: only its request fails
            request = samplers[row][0].request
            log.error("engine %s: sampling for request %s failed", self.engine_id, request.request_id, exc_info=err)
            self._fail(request, MintError(Code.INTERNAL, f"engine {self.engine_id} failed sampling this request (a bug; the engine logged it)"))
        now = time.monotonic()
        touched: dict[int, Request] = {}
        for (seq, _), token, logprob, alternatives in zip(samplers, tokens, logprobs, top, strict=True):
            if seq.request.done:
                continue
            seq.tokens.append(token)
            seq.out_tokens.append(token)
            seq.out_logprobs.append(logprob)
            if alternatives is not None:
                seq.out_top.append(alternatives)
            touched[id(seq.request)] = seq.request
        self.tokens_generated += len(samplers) - len(errors)
        self._generated.append((now, len(samplers) - len(errors)))
        while self._generated and now - self._generated[0][0] > 10.0:
            self._generated.popleft()
        for request in touched.values():
            try:
                self._report(request, [seq for seq, _ in samplers if seq.request is request])
            except Exception:  # a bug in one request's stop checks or text: that request fails, not its batch
                log.exception("engine %s: reporting request %s failed", self.engine_id, request.request_id)
                self._fail(request, MintError(Code.INTERNAL, f"engine {self.engine_id} failed reporting this request (a bug; the engine logged it)"))

    def _report(self, request: Request, sampled: list[SequenceState]) -> None:
        """After its sequences got a token: stop checks, events, and the request's end."""
        for seq in sampled:
            check_stop(seq, self.tokenizer, self.eos_ids, self.max_model_len)
        for seq in request.seqs:
            if request.buffered and seq.finish is None:
                continue
            event = take_event(seq, self.tokenizer, first=seq.emitted_tokens == 0)
            if event is not None:
                request.events.put(event)
            if seq.finish is not None:
                self.planner.finish_seq(seq)
        if not request.live:
            self._finish(request)

    def _finish(self, request: Request) -> None:
        self.planner.finish(request)
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
        return len(self.planner.waiting) + len(self._inbox)


def collect(request: Request, timeout_s: float | None = None) -> dict[int, SampleEvent]:
    """Merge a request's events into one finished event per sample index."""
    merged: dict[int, SampleEvent] = {}
    for event in _events(request, timeout_s):
        total = merged.setdefault(event.index, SampleEvent(index=event.index, token_ids=[], text="", logprobs=[]))
        total.token_ids += event.token_ids
        total.text += event.text
        total.logprobs += event.logprobs
        total.top_logprobs += event.top_logprobs
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


def _encodes(params: SamplingParams) -> bool:
    try:
        params.to_proto()
    except (TypeError, ValueError):
        return False
    return True


def _slot_bytes(model, max_rank: int) -> int:
    from mint.adapters.packing import lora_targets

    element = model.embed_tokens.weight.element_size()
    per_layer = sum((len(t.modules) * t.in_features + t.out_features) * max_rank for t in lora_targets(model.config))
    return per_layer * model.config.num_layers * element
