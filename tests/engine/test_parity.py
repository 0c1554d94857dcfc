"""The engine against transformers + peft (fp32): logprobs within 1e-4 and identical greedy tokens, for
every supported architecture, adapters of ranks 1..64 on all seven modules, mixed in one batch."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from mint.models.presets import init_base
from services.engine.engine import collect
from services.engine.sampling import SamplingParams
from tests.engine.conftest import publish, random_adapter, wait_resident

ADAPTERS = [
    dict(rank=1),
    dict(rank=8),
    dict(rank=64),
    dict(rank=16, use_rslora=True, alpha=8),
    dict(rank=4, modules=("q_proj", "v_proj", "down_proj")),  # a projection partly targeted, others not at all
]
PROMPTS = [[5, 17, 42, 99, 7, 300, 12], [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11, 12, 13], [400, 401]]


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3"])
def base(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / request.param
    config = init_base(path, arch=request.param, preset="tiny", seed=1)
    return path, config


def hf_with_adapters(path, adapters, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    names = []
    for i, weights in enumerate(adapters):
        directory = weights.save(tmp_path / f"adapter{i}")
        if i == 0:
            model = PeftModel.from_pretrained(model, directory, adapter_name="a0")
        else:
            model.load_adapter(directory, adapter_name=f"a{i}")
        names.append(f"a{i}")
    model.eval()
    return model, names


def hf_logprobs(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).squeeze(1)


def test_logprobs_and_greedy_match_transformers_peft(base, make_engine, source, tmp_path):
    path, config = base
    adapters = [random_adapter(config, seed=10 + i, **kw) for i, kw in enumerate(ADAPTERS)]
    specs = [publish(source, w, f"t/p{i}@1") for i, w in enumerate(adapters)]
    engine = make_engine(path)
    for spec in specs:
        wait_resident(engine, spec)

    # Every (adapter or base) x prompt pair in one step: a batch mixing all ranks and the base.
    pairs = [(i, p) for i in range(-1, len(specs)) for p in PROMPTS]
    steps = engine.steps
    with engine.hold():
        requests = [engine.score(specs[i] if i >= 0 else None, p) for i, p in pairs]
    for request in requests:
        collect(request, 60)
    results = [r.prompt_logprobs for r in requests]
    assert engine.steps == steps + 1

    model, names = hf_with_adapters(path, adapters, tmp_path)
    for (i, prompt), got in zip(pairs, results, strict=True):
        if i < 0:
            with model.disable_adapter():
                expected = hf_logprobs(model, prompt)
        else:
            model.set_adapter(names[i])
            expected = hf_logprobs(model, prompt)
        assert torch.allclose(torch.tensor(got), expected, atol=1e-4, rtol=0), (i, (torch.tensor(got) - expected).abs().max())

    # A step where no adapter targets o, gate/up or k: those projections are skipped, the rest still apply.
    partial = len(specs) - 1
    with engine.hold():
        requests = [engine.score(specs[partial], p) for p in PROMPTS]
    model.set_adapter(names[partial])
    for prompt, request in zip(PROMPTS, requests, strict=True):
        collect(request, 60)
        got, expected = torch.tensor(request.prompt_logprobs), hf_logprobs(model, prompt)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()

    # Greedy generation, all adapters in one running batch, token for token.
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    with engine.hold():
        runs = [(i, engine.sample(specs[i] if i >= 0 else None, PROMPTS[0], params)) for i in range(-1, len(specs))]
    for i, request in runs:
        got = collect(request, 60)[0].token_ids
        if i < 0:
            with model.disable_adapter():
                out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=12, do_sample=False)
        else:
            model.set_adapter(names[i])
            out = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=12, do_sample=False)
        assert got == out[0, len(PROMPTS[0]) :].tolist(), i


def test_a_cleared_slot_gives_exactly_the_base(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    base_lp = engine.compute_logprobs(None, [PROMPTS[1]])[0]
    spec = publish(source, random_adapter(engine.model_config, rank=8, seed=3))
    wait_resident(engine, spec)
    with_adapter = engine.compute_logprobs(spec, [PROMPTS[1]])[0]
    assert with_adapter != base_lp
    engine.residency.evict(spec.sha256)
    assert engine.compute_logprobs(None, [PROMPTS[1]])[0] == base_lp
