"""Whatever one request or adapter holds, it fails alone, with a client error naming it, and the engine goes
on serving; if the step loop ends anyway, the engine says so (health, the fleet) instead of hanging."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mint.adapters import AdapterWeights
from mint.adapters.packing import pack
from mint.adapters.spec import AdapterSpec
from mint.errors import Code, MintError
from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.server import channel
from services.engine.config import EngineConfig
from services.engine.engine import collect
from services.engine.fleet import FleetAgent
from services.engine.main import create_server
from services.engine.sampling import SamplingParams
from services.scheduler import LoadItem, MemoryScheduler, RedisScheduler
from tests.conftest import TEST_REDIS_URL
from tests.engine.conftest import publish, random_adapter, wait_resident

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79]
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def ref(spec: AdapterSpec, **changes) -> common_pb2.AdapterRef:
    fields = dict(address=spec.address, sha256=spec.sha256, rank=spec.rank, alpha=spec.alpha, use_rslora=spec.use_rslora,
                  target_modules=list(spec.target_modules))
    return common_pb2.AdapterRef(**{**fields, **changes})


def failure_of(request) -> MintError:
    with pytest.raises(MintError) as info:
        collect(request, 60)
    return info.value


def publish_bytes(source, data: bytes, like: AdapterSpec, address: str) -> AdapterSpec:
    """`data` as the blob of an adapter with `like`'s config."""
    sha = hashlib.sha256(data).hexdigest()
    source.blobs[sha] = data
    return dataclasses.replace(like, sha256=sha, address=address)


# --- item 1: an adapter whose scale overflows ------------------------------------------------------------


def test_an_absurd_lora_alpha_fails_its_own_requests_and_the_engine_serves_on(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    good = publish(source, random_adapter(engine.model_config, rank=4, seed=1), "acme/good@1")
    absurd = dataclasses.replace(publish(source, random_adapter(engine.model_config, rank=4, seed=2), "acme/huge@1"), alpha=1e300)

    # From a ref, it is refused before it joins a step...
    with pytest.raises(MintError, match="adapter acme/huge@1 cannot be served here: its config is invalid: lora_alpha") as info:
        engine.spec(ref(absurd))
    assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(MintError, match="adapter acme/good@1 cannot be served here: it names no blob: sha256 must be"):
        engine.spec(ref(good, sha256="../" * 8 + "etc"))
    # ...and a spec made in-process fails at its load, in the same step as a good request that finishes.
    with engine.hold():
        bad = engine.sample(absurd, PROMPT, GREEDY)
        fine = engine.sample(good, PROMPT, GREEDY)
    error = failure_of(bad)
    assert error.code is Code.FAILED_PRECONDITION and "adapter acme/huge@1 cannot be loaded: its config is invalid" in error.message
    assert len(collect(fine, 60)[0].token_ids) == 6
    assert engine.serving


def test_an_adapter_the_slots_refuse_is_marked_failed_and_its_batch_mates_finish(tiny_base_dir, make_engine, source):
    """The review's crash: a packed scale past float32 reached `set_slot` on the step thread and killed it.
    A packed adapter put straight into the host tier stands for any that reaches a slot copy that way."""
    engine = make_engine(tiny_base_dir)
    weights = random_adapter(engine.model_config, rank=4, seed=3)
    spec = publish(source, weights, "acme/overflow@1")
    packed = pack(weights, engine.model_config)
    packed.scale = 1e300
    engine.residency.host.put(spec.key, packed)
    with engine.hold():
        base = engine.sample(None, PROMPT, GREEDY)
        bad = engine.sample(spec, PROMPT, GREEDY)
    error = failure_of(bad)
    assert error.code is Code.FAILED_PRECONDITION
    assert "adapter acme/overflow@1 cannot be loaded: it does not fit this engine's adapter slots: its scale 1e+300" in error.message
    assert len(collect(base, 60)[0].token_ids) == 6
    assert spec.key not in engine.residency.host and engine.residency.tier_of(spec.key) != "device"
    assert engine.residency.counters.loads_failed == 1
    # Marked failed like a failed load: the next request fails at once, the engine keeps serving.
    assert failure_of(engine.sample(spec, PROMPT, GREEDY)).code is Code.FAILED_PRECONDITION
    assert len(collect(engine.sample(None, PROMPT, GREEDY), 60)[0].token_ids) == 6


# --- item 17 (engine side): what a blob can hold, each a precise client error --------------------------------------------


def test_blobs_that_disagree_with_their_config_or_the_base_fail_with_the_reason(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    config = engine.model_config
    like = publish(source, random_adapter(config, rank=4, seed=4), "acme/like@1")
    rank_one = random_adapter(config, rank=1, seed=5).to_safetensors()  # broadcast silently into rank 4 before
    deeper = AdapterWeights(config=random_adapter(config, rank=4, seed=6).config,
                            tensors={(layer + config.num_layers, m): pair for (layer, m), pair in random_adapter(config, rank=4, seed=6).tensors.items()})
    cases = {
        "acme/rank@1": (rank_one, "has shape"),
        "acme/garbage@1": (b"\x00" * 64, "safetensors"),
        "acme/deeper@1": (deeper.to_safetensors(), "layer"),
    }
    specs = {address: publish_bytes(source, data, like, address) for address, (data, _) in cases.items()}
    with engine.hold():
        requests = {address: engine.sample(spec, PROMPT, GREEDY) for address, spec in specs.items()}
        base = engine.sample(None, PROMPT, GREEDY)
    for address, request in requests.items():
        error = failure_of(request)
        assert error.code is Code.FAILED_PRECONDITION, (address, error)
        assert error.message.startswith(f"adapter {address} cannot be loaded: ") and cases[address][1] in error.message, error
    assert len(collect(base, 60)[0].token_ids) == 6


def test_weights_that_overflow_the_activations_fail_only_their_request(tiny_base_dir, make_engine, source):
    """Finite weights can still drive activations to Inf and logits to NaN: that request fails, naming its
    adapter; the requests sampled in the same step finish."""
    engine = make_engine(tiny_base_dir)
    weights = random_adapter(engine.model_config, rank=4, seed=7, scale=1e30)
    loud = publish(source, weights, "acme/loud@1")
    quiet = publish(source, random_adapter(engine.model_config, rank=4, seed=8), "acme/quiet@1")
    for spec in (loud, quiet):
        wait_resident(engine, spec)
    sampled = SamplingParams(max_tokens=6, temperature=0.8, seed=1, ignore_eos=True)
    with engine.hold():
        bad = engine.sample(loud, PROMPT, sampled)
        scored = engine.score(loud, PROMPT)
        mates = [engine.sample(quiet, PROMPT, sampled), engine.sample(None, PROMPT, sampled), engine.score(quiet, PROMPT)]
    for request in (bad, scored):
        error = failure_of(request)
        assert error.code is Code.FAILED_PRECONDITION and "adapter acme/loud@1 drives this prompt's activations to NaN or Inf" in error.message
    for request in mates:
        collect(request, 60)
    assert len(mates[2].prompt_logprobs) == len(PROMPT) - 1 and all(lp <= 0 for lp in mates[2].prompt_logprobs)


# --- item 5: extreme but representable sampling parameters ------------------------------------------------


@pytest.mark.parametrize(
    "extreme",
    [
        dict(temperature=1e-45),
        dict(temperature=1e-38),
        dict(temperature=1e-6),
        dict(temperature=3.4e38),
        dict(top_p=1e-45),
        dict(top_k=2**31 - 1),
        dict(temperature=1e-45, top_p=1e-45, top_k=1),
        dict(seed=2**63 - 1, n=4),
    ],
)
def test_extreme_sampling_parameters_sample_beside_their_batch_mates(tiny_base_dir, make_engine, extreme):
    engine = make_engine(tiny_base_dir)
    alone = collect(engine.sample(None, PROMPT, GREEDY), 60)[0].token_ids
    params = SamplingParams(**{"max_tokens": 6, "temperature": 1.0, "seed": 3, "ignore_eos": True, "logprobs": True, **extreme})
    with engine.hold():
        mates = [engine.sample(None, PROMPT, GREEDY) for _ in range(2)]
        odd = engine.sample(None, PROMPT, params)
    result = collect(odd, 60)
    assert len(result) == params.n
    for sample in result.values():
        assert len(sample.token_ids) == 6 and all(lp <= 0 for lp in sample.logprobs)
    assert [collect(m, 60)[0].token_ids for m in mates] == [alone, alone]
    if params.temperature < 1e-5:  # sampling greedily, as the limit of a vanishing temperature does
        assert result[0].token_ids == alone


@pytest.mark.parametrize(
    "params, field",
    [
        (SamplingParams(temperature=float("nan")), "temperature"),
        (SamplingParams(temperature=float("inf")), "temperature"),
        (SamplingParams(temperature=1e300), "temperature"),  # past float32: the wire could not carry it
        (SamplingParams(top_p=float("nan")), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(n=65), "n must be"),
        (SamplingParams(seed=2**64), "seed"),
        (SamplingParams(stop_token_ids=(10**6,)), "stop_token_ids"),
    ],
)
def test_parameters_a_step_cannot_sample_are_refused_before_they_join_one(tiny_base_dir, make_engine, params, field):
    engine = make_engine(tiny_base_dir)
    with pytest.raises(MintError, match=field) as info:
        engine.sample(None, PROMPT, params)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_extreme_parameters_over_grpc_are_answered(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir, base_model="tiny")
    server, port = create_server(EngineConfig(model_path=str(tiny_base_dir)), engine)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    try:
        stub = engine_pb2_grpc.EngineServiceStub(ch)
        prompt = common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=PROMPT))
        for extreme in (dict(temperature=1e-45), dict(top_p=1e-45, temperature=1.0), dict(top_k=2**31 - 1, temperature=1.0)):
            params = common_pb2.SamplingParams(max_tokens=4, ignore_eos=True, **extreme)
            chunks = list(stub.Sample(engine_pb2.EngineSampleRequest(prompt=prompt, params=params)))
            assert sum(len(c.token_ids) for c in chunks) == 4
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Sample(engine_pb2.EngineSampleRequest(prompt=prompt, params=common_pb2.SamplingParams(max_tokens=4, temperature=float("nan")))))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature must be a finite number >= 0" in info.value.details()
    finally:
        ch.close()
        server.stop(None)


# --- item 7: a failure is the adapter's; each caller's error names the caller's address --------------------


def test_a_load_failure_names_each_callers_own_address(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=9), "acme/first@1")
    same_bytes = dataclasses.replace(spec, address="rival/second@3")
    assert same_bytes.key == spec.key
    source.broken.add(spec.sha256)
    first = failure_of(engine.sample(spec, PROMPT, GREEDY))
    second = failure_of(engine.sample(same_bytes, PROMPT, GREEDY))  # the remembered failure, not a new load
    assert "acme/first@1" in first.message
    assert "rival/second@3" in second.message and "acme" not in second.message
    assert engine.residency.counters.loads_failed == 1
    with pytest.raises(MintError) as waited:
        engine.residency.wait(same_bytes, engine.residency.prefetch(same_bytes), 30)
    assert "rival/second@3" in waited.value.message and "acme" not in waited.value.message

    # What the fleet agent reports for the scheduler to keep names no one's address either.
    scheduler = MemoryScheduler(max_attempts=1)
    agent = FleetAgent(engine, scheduler, "engine.local:1").start()
    try:
        deadline = time.monotonic() + 30
        while not scheduler.engines():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        scheduler.enqueue_load(engine.engine_id, LoadItem(spec.key, 1000, ref(spec).SerializeToString()))
        while (reason := scheduler.load_failure(spec.key)) is None:
            assert time.monotonic() < deadline, "the failed load was never acked"
            time.sleep(0.01)
        assert "could not be fetched" in reason and "acme" not in reason
    finally:
        agent.stop()


# --- item 1 (b): a step loop that ends anyway ------------------------------------------------------------


class LoopKilled(BaseException):
    """Raised inside the step thread by the test: nothing in the loop may catch it."""


def kill_step_loop(engine) -> None:
    """End the engine's step thread the way an uncaught error would: an exception raised inside it."""
    thread = engine._thread
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(LoopKilled))
    assert hit == 1
    thread.join(30)
    assert not thread.is_alive()


@pytest.mark.server_errors  # the engine logs its loop's end, as it must
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_dead_step_loop_stops_serving_health_and_heartbeats(tiny_base_dir, make_engine, source, backend, redis_prefix):
    engine = make_engine(tiny_base_dir, base_model="tiny")
    server, port = create_server(EngineConfig(model_path=str(tiny_base_dir)), engine)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(ch)
    if backend == "memory":
        scheduler = MemoryScheduler(heartbeat_s=0.05)
    else:  # the fleet's: the engine must leave Redis too, so no gateway routes to it
        scheduler = RedisScheduler(TEST_REDIS_URL, prefix=redis_prefix, heartbeat_s=0.05)
    agent = FleetAgent(engine, scheduler, f"127.0.0.1:{port}").start()
    stopped = threading.Event()
    engine.on_failure(stopped.set)
    source.gate = threading.Event()  # holds adapter fetches: a request is left waiting when the loop ends
    try:
        deadline = time.monotonic() + 30
        while not scheduler.engines():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        spec = publish(source, random_adapter(engine.model_config, rank=4, seed=10), "acme/slow@1")
        waiting = engine.sample(spec, PROMPT, GREEDY)

        kill_step_loop(engine)
        assert stopped.is_set() and not engine.serving
        assert isinstance(engine.failure, LoopKilled)
        error = failure_of(waiting)  # failed at once, not at its deadline
        assert error.code is Code.UNAVAILABLE and "stopped serving" in error.message
        with pytest.raises(MintError) as later:
            engine.sample(None, PROMPT, GREEDY)
        assert later.value.code is Code.UNAVAILABLE
        for name in ("", "mint.v1.EngineService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The fleet agent leaves: out of the registry, and no heartbeat brings it back.
        while scheduler.engines():
            assert time.monotonic() < deadline, "the dead engine is still registered"
            time.sleep(0.01)
        agent._thread.join(30)
        assert not agent._thread.is_alive() and scheduler.engines() == []
        with pytest.raises(MintError) as unroutable:
            scheduler.route(spec.key, "tiny")
        assert unroutable.value.code is Code.UNAVAILABLE, unroutable.value
    finally:
        source.gate.set()
        agent.stop()
        ch.close()
        server.stop(None)
