"""Generation throughput with many distinct adapters in one batch, against transformers + peft.

    python -m bench.engine_mixed            # SmolLM2-135M shape
    python -m bench.engine_mixed --quick    # the tiny preset

64 concurrent requests, 32 prompt + 32 new tokens (greedy, fixed length), on a random base.
light: rank 8 on q,k,v,o, with the base alone, 1, 8 and 64 distinct adapters;
heavy: rank 16 on all seven modules, 1 and 64 distinct adapters, and the same 64-adapter workload through
transformers + peft `generate(adapter_names=...)`. MinT settings run interleaved, twice each; the best run
counts. Adapters are resident before timing (cold loads are bench.adapter_load's subject).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import (
    LIGHT_MODULES,
    MemorySource,
    copy_bandwidth_gbps,
    make_base,
    random_adapter,
    report,
    scratch_dir,
)
from mint.adapters import LORA_MODULES
from mint.runtime import tune_allocator
from services.engine.config import EngineConfig
from services.engine.engine import Engine, collect
from services.engine.sampling import SamplingParams

REQUESTS, PROMPT, NEW = 64, 32, 32


def run_mint(engine: Engine, specs: list, prompts: list[list[int]]) -> float:
    """Tokens per second for REQUESTS requests cycling through `specs` (None: the base alone)."""
    params = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    with engine.hold():
        requests = [engine.sample(specs[i % len(specs)], prompts[i], params, buffered=True) for i in range(REQUESTS)]
    for request in requests:
        assert len(collect(request, 3600)[0].token_ids) == NEW
    return REQUESTS * NEW / (time.perf_counter() - start)


def run_peft(base_dir: Path, adapters: list, prompts: list[list[int]], workdir: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    names = []
    for i, weights in enumerate(adapters):
        directory = weights.save(workdir / f"peft{i}")
        if i == 0:
            model = PeftModel.from_pretrained(model, directory, adapter_name="a0")
        else:
            model.load_adapter(directory, adapter_name=f"a{i}")
        names.append(f"a{i}")
    model.eval()
    input_ids = torch.tensor(prompts)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
            adapter_names=[names[i % len(names)] for i in range(REQUESTS)],
        )
    elapsed = time.perf_counter() - start
    assert out.shape == (REQUESTS, PROMPT + NEW)
    return REQUESTS * NEW / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    preset = "tiny" if args.quick else "smollm2-shape"
    tune_allocator()  # as `mint serve` and the engine process do
    torch.manual_seed(0)
    with scratch_dir() as tmp:
        workdir = Path(tmp)
        config = make_base(workdir / "base", preset)
        source = MemorySource()
        light = [source.add(random_adapter(config, rank=8, seed=i, modules=LIGHT_MODULES), f"bench/light@{i}") for i in range(64)]
        heavy_weights = [random_adapter(config, rank=16, seed=100 + i, modules=LORA_MODULES) for i in range(64)]
        heavy = [source.add(w, f"bench/heavy@{i}") for i, w in enumerate(heavy_weights)]
        prompts = torch.randint(0, config.vocab_size, (REQUESTS, PROMPT), generator=torch.Generator().manual_seed(1)).tolist()

        engine = Engine(
            EngineConfig(
                model_path=str(workdir / "base"), cache_dir=str(workdir / "cache"), max_lora_rank=16,
                device_budget_bytes=4 * 1024**3, max_slots=128, kv_cache_bytes=512 * 1024**2, max_batched_tokens=REQUESTS * PROMPT,
            ),
            source,
        ).start()
        for spec in light + heavy:
            engine.residency.prefetch(spec).result()
        while any(engine.residency.tier_of(s.key) != "device" for s in light + heavy):
            time.sleep(0.05)
        settings = {
            "tok_s_base": [None],
            "tok_s_1": light[:1],
            "tok_s_8": light[:8],
            "tok_s_64": light,
            "tok_s_1_heavy": heavy[:1],
            "tok_s_64_heavy": heavy,
        }
        best = dict.fromkeys(settings, 0.0)
        run_mint(engine, [None], prompts)  # warm-up
        for _ in range(args.rounds):
            for name, specs in settings.items():
                best[name] = max(best[name], run_mint(engine, specs, prompts))
                print(f"  {name:<16}{best[name]:10.1f} tok/s", flush=True)
        decode_step_s = REQUESTS / best["tok_s_64_heavy"]
        engine.stop()

        peft = run_peft(workdir / "base", heavy_weights, prompts, workdir)
        heavy_bytes = sum(w.nbytes for w in heavy_weights)
        bandwidth = copy_bandwidth_gbps()

    metrics = {
        **best,
        "one_over_base": best["tok_s_1"] / best["tok_s_base"],
        "mixed64_over_one": best["tok_s_64"] / best["tok_s_1"],
        "peft_tok_s_64_heavy": peft,
        "mint_over_peft_64": best["tok_s_64_heavy"] / peft,
        "mixed64_over_one_heavy": best["tok_s_64_heavy"] / best["tok_s_1_heavy"],
        # Reading every distinct adapter once per decode step at the measured copy bandwidth (read + write,
        # so a pure read is counted at half): the physical floor of the heavy 64-adapter step's LoRA part.
        "adapter_stream_ms_heavy": heavy_bytes / (bandwidth / 2 * 1e9) * 1e3,
        "heavy_ms_per_64_tokens": decode_step_s * 1e3,
        "copy_gbps": bandwidth,
    }
    report("engine_mixed", {"preset": preset, "requests": REQUESTS, "prompt_tokens": PROMPT, "new_tokens": NEW, "rounds": args.rounds}, metrics)


if __name__ == "__main__":
    main()
