"""An adapter is its bytes and the config they are packed with: the same blob published with two alphas
(or rsLoRA, or target modules) is two adapters, in an engine's tiers and in the scheduler's placements."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from mint.adapters import AdapterWeights
from mint.adapters.identity import ref_key
from mint.proto import common_pb2
from services.engine.engine import collect
from services.engine.fleet import FleetAgent
from services.scheduler import MemoryScheduler
from tests.engine.conftest import publish, random_adapter, wait_resident
from tests.engine.test_parity import PROMPTS, hf_logprobs, hf_with_adapters

CONFIGS = [dict(lora_alpha=8), dict(lora_alpha=64), dict(lora_alpha=8, use_rslora=True)]


def same_bytes_three_ways(config, source):
    """One blob, published with each config of CONFIGS: (weights, spec) per config."""
    base = random_adapter(config, rank=4, seed=21, modules=("q_proj", "v_proj", "down_proj"))
    variants = [AdapterWeights(config=dataclasses.replace(base.config, **changes), tensors=base.tensors) for changes in CONFIGS]
    specs = [publish(source, weights, f"t/variant{i}@1") for i, weights in enumerate(variants)]
    assert len({s.sha256 for s in specs}) == 1 and len({s.key for s in specs}) == len(specs)
    return variants, specs


@pytest.fixture(scope="module")
def reference(tiny_base_dir, tmp_path_factory):
    """transformers + peft logprobs of each config of the one blob, per prompt."""
    from mint.models.loading import read_config
    from tests.engine.conftest import MemorySource

    variants, _ = same_bytes_three_ways(read_config(tiny_base_dir), MemorySource())
    model, names = hf_with_adapters(tiny_base_dir, variants, tmp_path_factory.mktemp("identity"))
    expected = {}
    for i, name in enumerate(names):
        model.set_adapter(name)
        expected[i] = [hf_logprobs(model, prompt) for prompt in PROMPTS]
    return expected


def check(engine, spec, expected) -> None:
    got = engine.compute_logprobs(spec, PROMPTS, timeout_s=60)
    for values, want in zip(got, expected, strict=True):
        assert torch.allclose(torch.tensor(values), want, atol=1e-4, rtol=0), (spec.address, (torch.tensor(values) - want).abs().max())


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)])
def test_each_config_of_the_same_bytes_gets_its_own_logprobs(tiny_base_dir, make_engine, source, reference, order):
    engine = make_engine(tiny_base_dir)
    _, specs = same_bytes_three_ways(engine.model_config, source)
    for i in order:  # the first loaded must not answer for the others
        check(engine, specs[i], reference[i])
    assert engine.residency.counters.loads_completed == 3 and source.fetches == 1  # the bytes, fetched once
    for i in order:  # again, now all resident
        check(engine, specs[i], reference[i])


def test_each_config_of_the_same_bytes_in_one_batch(tiny_base_dir, make_engine, source, reference):
    engine = make_engine(tiny_base_dir)
    _, specs = same_bytes_three_ways(engine.model_config, source)
    with engine.hold():
        requests = [(i, p, engine.score(spec, PROMPTS[p])) for i, spec in enumerate(specs) for p in range(len(PROMPTS))]
    for i, p, request in requests:
        collect(request, 60)
        assert torch.allclose(torch.tensor(request.prompt_logprobs), reference[i][p], atol=1e-4, rtol=0), (i, p)


def test_the_scheduler_places_each_config_by_its_own_key(tiny_base_dir, make_engine, source):
    """Routing says "resident" only for the config an engine holds, not for other configs of its bytes."""
    engine = make_engine(tiny_base_dir)
    _, (held, other, _) = same_bytes_three_ways(engine.model_config, source)
    scheduler = MemoryScheduler()
    agent = FleetAgent(engine, scheduler, "engine.local:1").start()
    try:
        wait_resident(engine, held)
        deadline = time.monotonic() + 30
        while scheduler.holders(held.key) != [engine.engine_id]:
            assert time.monotonic() < deadline, "the engine never reported the adapter"
            time.sleep(0.01)
        base = engine.base_model
        assert scheduler.route(held.key, base).resident
        assert not scheduler.route(other.key, base).resident and scheduler.holders(other.key) == []
    finally:
        agent.stop()
    # The gateway derives the same key from the catalog's AdapterRef as the engine from its spec.
    message = common_pb2.AdapterRef(sha256=other.sha256, rank=other.rank, alpha=other.alpha, use_rslora=other.use_rslora,
                                    target_modules=list(reversed(other.target_modules)))
    assert ref_key(message) == other.key == engine.spec(message).key
