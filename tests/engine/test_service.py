"""EngineService over a real gRPC channel."""

from __future__ import annotations

import time

import grpc
import pytest

from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.server import channel
from services.engine.config import EngineConfig
from services.engine.main import create_server
from tests.engine.conftest import publish, random_adapter


@pytest.fixture
def stub(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir, base_model="tiny")
    server, port = create_server(EngineConfig(model_path=str(tiny_base_dir)), engine)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    yield engine_pb2_grpc.EngineServiceStub(ch), engine
    ch.close()
    server.stop(None)


def ref(spec, base="tiny") -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(
        address=spec.address, sha256=spec.sha256, rank=spec.rank, alpha=spec.alpha, target_modules=list(spec.target_modules), base_model=base
    )


def params(**kw) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**{"max_tokens": 5, **kw})


def test_sample_streams_tokens_text_and_logprobs(stub, source):
    stub, engine = stub
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=1), "acme/bot@1")
    request = engine_pb2.EngineSampleRequest(
        adapter=ref(spec), prompt=common_pb2.Prompt(text="hello there"), params=params(logprobs=True, ignore_eos=True, n=2, temperature=0.7, seed=1)
    )
    chunks = list(stub.Sample(request))
    by_index = {}
    for chunk in chunks:
        by_index.setdefault(chunk.index, []).append(chunk)
    assert sorted(by_index) == [0, 1]
    for pieces in by_index.values():
        assert sum(len(c.token_ids) for c in pieces) == 5 == sum(len(c.logprobs) for c in pieces)
        assert pieces[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert pieces[0].prompt_tokens == len(engine.tokenizer.encode("hello there"))
    chat = common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content="hi")]))
    assert list(stub.Sample(engine_pb2.EngineSampleRequest(prompt=chat, params=params())))


def test_logprobs_load_pin_evict_and_stats(stub, source):
    stub, engine = stub
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=2), "acme/bot@2")
    status = stub.LoadAdapter(engine_pb2.LoadAdapterRequest(adapter=ref(spec), wait=True, pin=True))
    assert status.tier in (engine_pb2.TIER_HOST, engine_pb2.TIER_DEVICE) and status.pinned
    deadline = time.monotonic() + 10
    while stub.PinAdapter(engine_pb2.PinAdapterRequest(sha256=spec.sha256, pinned=True)).tier != engine_pb2.TIER_DEVICE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    scored = stub.ComputeLogprobs(engine_pb2.EngineLogprobsRequest(adapter=ref(spec), sequences=[common_pb2.TokenIds(ids=[1, 2, 3, 4])]))
    assert len(scored.sequences[0].logprobs) == 3
    stats = stub.GetStats(engine_pb2.GetStatsRequest(include_adapters=True))
    device = next(t for t in stats.tiers if t.tier == engine_pb2.TIER_DEVICE)
    assert device.adapters == 1 and device.bytes > 0 and device.budget_bytes >= device.bytes
    assert stats.adapters[0].sha256 == spec.sha256 and stats.adapters[0].pinned
    assert stats.kv_blocks_free == stats.kv_blocks_total
    assert stub.EvictAdapter(engine_pb2.EvictAdapterRequest(sha256=spec.sha256)).tier == engine_pb2.TIER_DISK
    info = stub.GetModelInfo(engine_pb2.GetModelInfoRequest())
    assert (info.base_model, info.vocab_size, info.max_lora_rank) == ("tiny", 512, 64)


@pytest.mark.parametrize(
    "request_kw, fragment",
    [
        (dict(params=params(max_tokens=0)), "max_tokens"),
        (dict(params=params(temperature=-1)), "temperature"),
        (dict(params=params(top_p=2)), "top_p"),
        (dict(params=params(top_k=-3)), "top_k"),
        (dict(params=params(n=1000)), "n must be"),
        (dict(params=params(stop_token_ids=[99999])), "stop_token_ids"),
        (dict(prompt=common_pb2.Prompt()), "prompt is empty"),
        (dict(prompt=common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[-5]))), "outside the vocabulary"),
    ],
)
def test_bad_sample_requests_are_invalid_argument(stub, request_kw, fragment):
    stub, _ = stub
    request = engine_pb2.EngineSampleRequest(**{"prompt": common_pb2.Prompt(text="hi"), "params": params(), **request_kw})
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Sample(request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_adapter_for_another_base_is_refused(stub, source):
    stub, engine = stub
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=3), "acme/bot@3")
    request = engine_pb2.EngineSampleRequest(adapter=ref(spec, base="other-base"), prompt=common_pb2.Prompt(text="hi"), params=params())
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Sample(request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "other-base" in info.value.details()


def test_a_client_that_disconnects_frees_its_work(stub):
    stub, engine = stub
    request = engine_pb2.EngineSampleRequest(prompt=common_pb2.Prompt(text="hi"), params=params(max_tokens=2000, ignore_eos=True))
    stream = stub.Sample(request)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while engine.planner.running or engine.cache.allocator.num_free != engine.cache.num_blocks:
        assert time.monotonic() < deadline, "cancelled request still holds engine resources"
        time.sleep(0.02)
