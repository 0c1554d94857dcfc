"""One trainer-to-engine handoff: adapter-only (MinT's path) against a merged checkpoint.

    python -m bench.handoff            # SmolLM2-135M shape
    python -m bench.handoff --quick    # the tiny preset

Setup: an EmbeddedStack (SQLite catalog, blob directory, one engine, one trainer, gateway) on a random base,
a ServiceClient, and one LoRA training session per rank (1, 8, 16; all seven modules). Before every handoff
the session takes one training step (forward_backward + optim_step, untimed), so each handoff carries new
weights with a new sha256 that the engine has never seen.

adapter-only, timed from "the trainer holds new weights" to "16 tokens sampled from them":
    `save_weights_and_get_sampling_client` (export the session's adapter, publish it to the catalog: hash,
    validate, store the blob, record the revision) then `sample` of 16 greedy tokens through the gateway (the
    name resolves, the engine fetches the blob into its disk cache, loads it into a slot, prefills, decodes).
merged, the same span the way a merged-checkpoint system does it:
    export the session's adapter; merge it into a copy of the base (W + scale * B @ A for every targeted
    module; the trainer's base stays untouched, as it serves other sessions); write the full checkpoint
    (`mint.models.loading.save_model`); start a new `Engine` on it (`load_model`, KV cache, one slot);
    sample the same 16 greedy tokens from the base alone (in-process: no gateway hop, which favors it a
    little; the new engine is not registered with the stack's gateway).
The two paths run interleaved, medians count: per round, for each rank `reps` adapter-only handoffs, then
merged ones (their rank rotates over the three; the rank barely changes their cost).

What counts is the handoff itself, as in "the handoff step" the merged baseline is quoted for (merge,
save, reload): each path runs a 1-token handoff (fresh weights again) and repeats that sample at once on the
warm engine that served it; handoff minus warm repeat is the handoff's cost (publish, resolve, blob fetch,
load and slot copy; or export, merge, save, reload and the new engine's first step). adapter_s_r*,
merged_s and speedup_r*_x = merged_s / adapter_s_r* are those costs. The full spans ending in 16 sampled
tokens are reported too (*_16_tokens_s): on a CPU the 16-token decode at batch 1 is most of either, the
same on both paths. `same_tokens` is the share of merged handoffs whose 16 tokens equal the adapter path's
for the same weights (greedy; 1.0 means the merge is exact enough not to change them).

For reference, the same run measures transformers + peft's merged handoff of a rank-8 adapter (merge_and_unload,
save_pretrained, from_pretrained: the 2.1 s the issue quotes) as peft_merged_s, and speedup_vs_peft_r8_x.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench.common import make_base, random_adapter, report, scratch_dir
from mint.adapters import AdapterWeights
from mint.adapters.packing import lora_targets, pack
from mint.models.loading import load_model, read_config, save_model
from mint.models.transformer import Transformer
from mint.sdk import AdamParams, SamplingParams, ServiceClient, TrainingClient, next_token_datum
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.engine.config import EngineConfig
from services.engine.engine import Engine, collect

RANKS = (1, 8, 16)
NEW_TOKENS = 16
PROMPT = list(range(3, 19))
ENGINE = {"max_lora_rank": max(RANKS), "max_slots": 8, "kv_cache_bytes": 64 * 1024**2}


@dataclasses.dataclass(slots=True)
class Policy:
    rank: int
    client: TrainingClient
    revisions: int = 0
    tokens: list[int] = dataclasses.field(default_factory=list)  # the 16 tokens sampled from its newest revision


@dataclasses.dataclass(slots=True)
class Handoff:
    phases: dict[str, float]  # seconds, in order; their sum is the handoff
    warm_s: float = 0.0  # the same sample again on the warm engine that served it (outside the handoff)

    @property
    def total_s(self) -> float:
        return sum(self.phases.values())


class Laps:
    """Consecutive phase timings."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._clock
        self._clock = now


def train_step(policy: Policy) -> None:
    """New weights in the trainer: one small supervised step (untimed)."""
    datum = next_token_datum(PROMPT, [20 + policy.revisions % 7] * 8)
    policy.client.forward_backward([datum], "cross_entropy")
    policy.client.optim_step(AdamParams(learning_rate=1e-2))


def adapter_handoff(policy: Policy, new_tokens: int, *, warm: bool) -> Handoff:
    """Publish the session's weights and sample `new_tokens` greedy tokens from them through the gateway."""
    policy.revisions += 1
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, logprobs=False)
    lap = Laps()
    sampler = policy.client.save_weights_and_get_sampling_client(f"handoff-{policy.revisions}")
    lap("publish")
    tokens = sampler.sample(PROMPT, 1, params).sequences[0].tokens
    lap("sample")
    assert len(tokens) == new_tokens, tokens
    if new_tokens == NEW_TOKENS:
        policy.tokens = tokens
    handoff = Handoff(lap.phases)
    if warm:
        start = time.perf_counter()
        sampler.sample(PROMPT, 1, params)
        handoff.warm_s = time.perf_counter() - start
    return handoff


def merge(base: Transformer, weights: AdapterWeights) -> Transformer:
    """A new model whose targeted projections hold W + scale * B @ A; other tensors are shared with `base`."""
    packed = pack(weights, base.config)
    targets = {t.path: t for t in lora_targets(base.config)}
    state = dict(base.state_dict())
    for path, (a_all, b_all) in packed.targets.items():
        offsets = targets[path].offsets
        for index, (a, b) in enumerate(zip(a_all, b_all, strict=True)):
            name = f"layers.{index}.{path}.weight"
            merged = state[name].clone()
            for s in range(a.shape[0]):
                merged[offsets[s] : offsets[s + 1]].addmm_(b[offsets[s] : offsets[s + 1]], a[s], alpha=packed.scale)
            state[name] = merged
    with torch.device("meta"):
        model = Transformer(base.config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model


def merged_handoff(stack: EmbeddedStack, policy: Policy, base: Transformer, workdir: Path, new_tokens: int, *, warm: bool) -> tuple[Handoff, list[int]]:
    """The merged-checkpoint handoff of the session's current weights, and the tokens it sampled."""
    session = stack.trainer.session(policy.client.session_id)
    target = workdir / "merged"
    shutil.rmtree(target, ignore_errors=True)
    lap = Laps()
    with session.lock:
        weights = session.adapter_weights()
    lap("export")
    model = merge(base, weights)
    lap("merge")
    save_model(model, target)
    for file in Path(stack.config.model_path).iterdir():  # the tokenizer and anything else beside the weights
        if not (target / file.name).exists() and not file.name.startswith("model"):
            shutil.copy(file, target / file.name)
    lap("save")
    config = EngineConfig(
        model_path=str(target), cache_dir=str(workdir / "merged-cache"), max_lora_rank=1, max_slots=1, kv_cache_bytes=ENGINE["kv_cache_bytes"]
    )
    engine = Engine(config, stack.engine.residency.source).start()
    lap("reload")
    try:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        tokens = collect(engine.sample(None, PROMPT, params), 600)[0].token_ids
        lap("sample")
        handoff = Handoff(lap.phases)
        if warm:
            start = time.perf_counter()
            collect(engine.sample(None, PROMPT, params), 600)
            handoff.warm_s = time.perf_counter() - start
    finally:
        engine.stop()
    return handoff, tokens


def peft_merged_handoff(base_dir: Path, weights: AdapterWeights, workdir: Path) -> float:
    """The reference the issue quotes, measured here: transformers + peft's merged handoff of the same
    adapter (the trainer's PeftModel is loaded beforehand, untimed): merge_and_unload, save_pretrained,
    and the server's from_pretrained of the result."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = weights.save(workdir / "peft-adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    target = workdir / "peft-merged"
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    merged = model.merge_and_unload()
    merged.save_pretrained(target)
    AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of: every rank adapter-only (x reps), then merged")
    parser.add_argument("--adapter-reps", type=int, default=0, help="adapter-only handoffs per rank per round")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "smollm2-shape"
    rounds = args.rounds or (5 if args.quick else 3)
    reps = args.adapter_reps or (2 if args.quick else 2)
    torch.manual_seed(0)
    with scratch_dir() as tmp:
        workdir = Path(tmp)
        make_base(workdir / "base", preset)
        stack = EmbeddedStack(
            EmbeddedConfig(model_path=str(workdir / "base"), data_dir=str(workdir / "stack"), address="127.0.0.1:0", engine=ENGINE)
        ).start()
        try:
            results = run(stack, workdir, rounds, reps)
        finally:
            stack.stop()
        peft_s = statistics.median(
            peft_merged_handoff(workdir / "base", random_adapter(read_config(workdir / "base"), rank=8, seed=i), workdir) for i in range(2)
        )
    metrics = summarize(*results)
    metrics["peft_merged_s"] = peft_s
    metrics["speedup_vs_peft_r8_x"] = peft_s / metrics["adapter_s_r8"]
    print(f"transformers + peft merged handoff (merge_and_unload, save_pretrained, from_pretrained): {peft_s:.3f} s")
    params = {"preset": preset, "ranks": list(RANKS), "modules": "all", "new_tokens": NEW_TOKENS, "rounds": rounds, "adapter_reps": reps}
    report("handoff", params, metrics)


def run(stack: EmbeddedStack, workdir: Path, rounds: int, reps: int):
    """Interleaved handoffs. Per round and rank, `reps` times: a 16-token handoff, then a 1-token one (and
    its warm repeat: what is left of it is the handoff's own overhead); then one merged handoff of each kind."""
    service = ServiceClient(stack.address, stack.admin_key)
    policies = [Policy(rank, service.create_lora_training_client(stack.base_model, f"handoff-r{rank}", rank=rank, seed=rank)) for rank in RANKS]
    base = load_model(workdir / "base")  # the trainer's resident base, which a merge must leave intact
    for policy in policies:  # warm every path once, untimed
        train_step(policy)
        adapter_handoff(policy, NEW_TOKENS, warm=False)
    merged_handoff(stack, policies[0], base, workdir, 1, warm=False)
    adapter: dict[tuple[int, int], list[Handoff]] = {(rank, n): [] for rank in RANKS for n in (NEW_TOKENS, 1)}
    merged: dict[int, list[Handoff]] = {NEW_TOKENS: [], 1: []}
    same: list[bool] = []
    for round_index in range(rounds):
        for policy in policies:
            for _ in range(reps):
                for new_tokens in (1, NEW_TOKENS):  # the 16-token handoff last: its weights are merged below
                    train_step(policy)
                    adapter[(policy.rank, new_tokens)].append(adapter_handoff(policy, new_tokens, warm=new_tokens == 1))
        policy = policies[round_index % len(policies)]
        handoff, tokens = merged_handoff(stack, policy, base, workdir, NEW_TOKENS, warm=False)
        merged[NEW_TOKENS].append(handoff)
        same.append(tokens == policy.tokens)
        merged[1].append(merged_handoff(stack, policy, base, workdir, 1, warm=True)[0])
        print(f"  round {round_index + 1}: adapter r8 {adapter[(8, NEW_TOKENS)][-1].total_s:.3f} s, merged {handoff.total_s:.3f} s", flush=True)
    service.close()
    return adapter, merged, same


def summarize(adapter: dict[tuple[int, int], list[Handoff]], merged: dict[int, list[Handoff]], same: list[bool]) -> dict[str, float]:
    """Medians. The handoff: from new weights to the first token sampled from them, less that same sample on a
    warm engine (identical work on both paths). The 16-token spans are reported beside it."""
    median = statistics.median
    metrics: dict[str, float] = {f"adapter_s_r{rank}": median(h.total_s - h.warm_s for h in adapter[(rank, 1)]) for rank in RANKS}
    metrics["merged_s"] = median(h.total_s - h.warm_s for h in merged[1])
    metrics.update({f"speedup_r{rank}_x": metrics["merged_s"] / metrics[f"adapter_s_r{rank}"] for rank in RANKS})
    metrics.update({f"adapter_16_tokens_s_r{rank}": median(h.total_s for h in adapter[(rank, NEW_TOKENS)]) for rank in RANKS})
    metrics["merged_16_tokens_s"] = median(h.total_s for h in merged[NEW_TOKENS])
    metrics.update({f"adapter_publish_s_r{rank}": median(h.phases["publish"] for h in adapter[(rank, NEW_TOKENS)]) for rank in RANKS})
    metrics.update({f"merged_{name}_s": median(h.phases[name] for h in merged[NEW_TOKENS]) for name in merged[NEW_TOKENS][0].phases})
    metrics["warm_first_token_s"] = median(h.warm_s for h in adapter[(8, 1)])
    metrics["same_tokens"] = sum(same) / len(same)

    print(f"\n{'path':<14}{'handoff s':>11}{'x faster':>10}{'with 16 tokens s':>18}")
    for rank in RANKS:
        print(
            f"{'adapter r' + str(rank):<14}{metrics[f'adapter_s_r{rank}']:>11.3f}{metrics[f'speedup_r{rank}_x']:>10.1f}"
            f"{metrics[f'adapter_16_tokens_s_r{rank}']:>18.3f}"
        )
    print(f"{'merged':<14}{metrics['merged_s']:>11.3f}{'':>10}{metrics['merged_16_tokens_s']:>18.3f}")
    print("merged phases (median s): " + ", ".join(f"{name} {metrics[f'merged_{name}_s']:.3f}" for name in merged[NEW_TOKENS][0].phases))
    print("adapter publish (median s): " + ", ".join(f"r{rank} {metrics[f'adapter_publish_s_r{rank}']:.3f}" for rank in RANKS))
    print(f"a 1-token sample on a warm engine (r8): {metrics['warm_first_token_s']:.3f} s\n")
    return metrics


if __name__ == "__main__":
    main()
