"""EngineService over gRPC: prompts to token ids (text and chat prompts with the base's tokenizer, which a
base may lack: `Engine.text_tokenizer`), engine calls, events to SampleChunk messages, and the base's
tokenizer files for clients (through the gateway)."""

from __future__ import annotations

from collections.abc import Iterator

from mint.adapters.identity import blob_of
from mint.errors import invalid, not_found
from mint.models.tokenizer import tokenizer_files
from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.server import time_left
from services.engine.engine import Engine
from services.engine.residency import Placement
from services.engine.sampling import SamplingParams
from services.engine.sequences import Request, SampleEvent

TIER_TO_PB = {
    "device": engine_pb2.TIER_DEVICE,
    "host": engine_pb2.TIER_HOST,
    "disk": engine_pb2.TIER_DISK,
    "loading": engine_pb2.TIER_LOADING,
    "none": engine_pb2.TIER_NONE,
}


def prompt_ids(engine: Engine, prompt: common_pb2.Prompt) -> list[int]:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return engine.text_tokenizer().encode(prompt.text)
    if kind == "tokens":
        return list(prompt.tokens.ids)
    if kind == "chat":
        messages = [{"role": m.role, "content": m.content} for m in prompt.chat.messages]
        if not messages:
            raise invalid("a chat prompt needs at least one message")
        return engine.text_tokenizer().encode_chat(
            messages,
            add_generation_prompt=not prompt.chat.continue_final_message,
            allow_special_tokens_in_content=prompt.chat.allow_special_tokens_in_content,
        )
    raise invalid("the prompt is empty: set text, tokens or chat")


def chunk_pb(event: SampleEvent) -> common_pb2.SampleChunk:
    return common_pb2.SampleChunk(
        index=event.index,
        token_ids=event.token_ids,
        text=event.text,
        logprobs=event.logprobs,
        finish_reason=event.finish.value if event.finish else common_pb2.FINISH_REASON_UNSPECIFIED,  # mint.sdk.types.Finish
        prompt_tokens=event.prompt_tokens,
        top_logprobs=[common_pb2.TopLogprobs(token_ids=ids, logprobs=values) for ids, values in event.top_logprobs],
    )


def start_sample(engine: Engine, request: engine_pb2.EngineSampleRequest) -> Request:
    spec = engine.spec(request.adapter if request.HasField("adapter") else None)
    params = SamplingParams.from_proto(request.params, max_model_len=engine.max_model_len, vocab_size=engine.model_config.vocab_size)
    return engine.sample(spec, prompt_ids(engine, request.prompt), params, request.request_id, buffered=request.buffered)


def stream_chunks(handle: Request) -> Iterator[common_pb2.SampleChunk]:
    """The request's events as SampleChunk messages. Events that are already waiting are merged per sample,
    so a busy engine sends one message per sample per wake-up rather than one per token."""
    while True:
        batch = [handle.events.get()]
        while not handle.events.empty():
            batch.append(handle.events.get_nowait())
        merged: dict[int, SampleEvent] = {}
        end = False
        for item in batch:
            if item is None:
                end = True
                continue
            if isinstance(item, Exception):
                raise item
            into = merged.get(item.index)
            if into is None:
                merged[item.index] = item
            else:
                into.token_ids += item.token_ids
                into.text += item.text
                into.logprobs += item.logprobs
                into.top_logprobs += item.top_logprobs
                into.finish = item.finish or into.finish
        yield from (chunk_pb(event) for event in merged.values())
        if end:
            return


def compute_logprobs(engine: Engine, request: engine_pb2.EngineLogprobsRequest, timeout_s: float | None) -> engine_pb2.LogprobsResponse:
    spec = engine.spec(request.adapter if request.HasField("adapter") else None)
    results = engine.compute_logprobs(spec, [list(s.ids) for s in request.sequences], timeout_s=timeout_s)
    return engine_pb2.LogprobsResponse(sequences=[engine_pb2.SequenceLogprobs(logprobs=r) for r in results])


def base_tokenizer(engine: Engine, request: engine_pb2.GetBaseTokenizerRequest) -> engine_pb2.BaseTokenizer:
    if request.base_model and request.base_model != engine.base_model:
        raise not_found(f"this engine serves base model {engine.base_model!r}, not {request.base_model!r}")
    return engine_pb2.BaseTokenizer(base_model=engine.base_model, files=tokenizer_files(engine.base_model, engine.config.model_path))


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    def Sample(self, request, context):
        handle = start_sample(self.engine, request)
        # A client that goes away frees its sequences and KV blocks at the next step.
        context.add_callback(lambda: self.engine.cancel(handle))
        yield from stream_chunks(handle)

    def ComputeLogprobs(self, request, context):
        return compute_logprobs(self.engine, request, time_left(context))

    def LoadAdapter(self, request, context):
        spec = self.engine.spec(request.adapter)
        if spec is None:
            raise invalid("LoadAdapter needs an adapter with a sha256")
        residency = self.engine.residency
        future = residency.prefetch(spec, pin=request.pin)
        if request.wait:
            residency.wait(spec, future, time_left(context))
        return _status_pb(spec.sha256, residency.placement(spec.key), spec.address)

    # Evicting and pinning name a blob: they act on every packing of it this engine holds.
    def EvictAdapter(self, request, context):
        self.engine.residency.evict(request.sha256)
        return _status_pb(request.sha256, self.engine.residency.blob_placement(request.sha256))

    def PinAdapter(self, request, context):
        self.engine.residency.pin(request.sha256, request.pinned)
        return _status_pb(request.sha256, self.engine.residency.blob_placement(request.sha256))

    def GetStats(self, request, context):
        return engine_stats(self.engine, include_adapters=request.include_adapters)

    def GetModelInfo(self, request, context):
        engine = self.engine
        return engine_pb2.ModelInfo(
            base_model=engine.base_model,
            architecture=engine.model_config.architecture,
            vocab_size=engine.model_config.vocab_size,
            max_model_len=engine.max_model_len,
            max_lora_rank=engine.lora.max_rank,
            eos_token_ids=sorted(engine.eos_ids),
        )

    def GetTokenizer(self, request, context):
        return base_tokenizer(self.engine, request)


def _status_pb(sha256: str, placement: Placement, address: str = "") -> engine_pb2.AdapterStatus:
    return engine_pb2.AdapterStatus(
        sha256=sha256, address=address, tier=TIER_TO_PB[placement.tier], pinned=placement.pinned, slot=placement.slot, bytes=placement.bytes
    )


def engine_stats(engine: Engine, *, include_adapters: bool = False) -> engine_pb2.EngineStats:
    residency = engine.residency
    snap = residency.snapshot()
    device_count, device_bytes, occupants = snap["device"]
    stats = engine_pb2.EngineStats(
        engine_id=engine.engine_id,
        base_model=engine.base_model,
        tiers=[
            engine_pb2.TierStats(tier=engine_pb2.TIER_DEVICE, adapters=device_count, bytes=device_bytes, budget_bytes=engine.device_budget_bytes),
            engine_pb2.TierStats(tier=engine_pb2.TIER_HOST, adapters=snap["host"][0], bytes=snap["host"][1], budget_bytes=residency.host.budget_bytes),
            engine_pb2.TierStats(tier=engine_pb2.TIER_DISK, adapters=snap["disk"][0], bytes=snap["disk"][1], budget_bytes=residency.disk.budget_bytes),
        ],
        running=engine.planner.num_running_seqs,
        waiting=engine.queue_depth,
        loading=snap["loading"],
        tokens_per_s=engine.tokens_per_s(),
        tokens_generated=engine.tokens_generated,
        requests_finished=engine.requests_finished,
        kv_blocks_total=engine.cache.num_blocks,
        kv_blocks_free=engine.cache.allocator.num_free,
        loads_completed=residency.counters.loads_completed,
        loads_failed=residency.counters.loads_failed,
    )
    if include_adapters:
        stats.adapters.extend(
            engine_pb2.AdapterStatus(sha256=blob_of(key), tier=engine_pb2.TIER_DEVICE, slot=slot, pinned=key in snap["pinned"])
            for key, slot in occupants.items()
        )
    return stats

